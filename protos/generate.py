"""Generate the Python gRPC stubs (with .pyi) beside the .proto files.

`make protos` runs this; tests/unit/test_protos_fresh.py runs it into a temporary folder and
compares, so committed stubs cannot drift from their contracts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.glob("kokoropay/**/*.proto"))


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every .proto under root into out_dir; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include_well_known = str(Path(protoc.__file__).parent / "_proto")
    for proto in proto_files(root):
        args = [
            "protoc",
            f"-I{root}",
            f"-I{include_well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(root)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    # Regular packages, so setuptools and mypy find the stubs without namespace guessing.
    for package_dir in {p.parent for p in out_dir.glob("kokoropay/**/*_pb2.py")}:
        for folder in [package_dir, *package_dir.relative_to(out_dir).parents]:
            init = out_dir / folder / "__init__.py" if folder != Path(".") else None
            if init is not None and not init.exists():
                init.write_text("")
    return sorted(p for p in out_dir.glob("kokoropay/**/*.py*") if p.is_file())


if __name__ == "__main__":
    written = generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
    print(f"generated {len(written)} files")
