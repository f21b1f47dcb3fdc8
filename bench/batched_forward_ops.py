"""How many kernels does one `forward_batch` call launch, and how does that grow with the batch?

    python -m bench.batched_forward_ops [--batch 1,8,32] [--size 50] [--random-weights CONFIG]

On a GPU a batch of short inputs costs about one launch per kernel, so a batched pass pays only
if its kernel count stays near flat as the batch grows. This counts, on the CPU, the aten
operations that reach the backend (below autograd, composite operations already split into
what they run): all of them, those that launch a kernel (not views, not allocations), and the
scalar reads back to the host (`.item()`), each of which would stall a GPU's queue if the value
lived there (here every tensor is on the CPU, lengths included). Copies between host and device
are no operations on the CPU and go uncounted; work on host tensors (padding the inputs' ids)
counts as kernels, and is most of what still grows with the batch. The items are windows of one
passage (bench/batched_forward_bench.py) at speed 1, without generators of their own, as in
production.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.batched_forward_bench import items_of, load_model, window
from services.synth.engine.batched_forward import forward_batch

# Operations that hand back memory or metadata only: no kernel runs.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# Composite on the CPU, where a packed LSTM loops over its steps in small operations; a GPU runs
# it whole (cuDNN): counted as one.
_RUN_WHOLE = {"lstm"}
# A tensor's value read by the host: a sync on a GPU.
_HOST_READ = "_local_scalar_dense"


class OpCounter(TorchDispatchMode):
    """Counts the operations dispatched inside it, each composite one as the ones it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.kernels: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        # Under inference mode composite operations (linear, instance_norm) reach this mode
        # whole: split them, so that what is counted is what a backend runs.
        if name not in _RUN_WHOLE and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), torch._C.DispatchKey.CompositeImplicitAutograd
        ):
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        if not func.is_view and name not in _NO_KERNEL and name != _HOST_READ:
            self.kernels[name] += 1
        return func(*args, **kwargs)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,8,32", help="batch sizes, e.g. 1,8,32")
    parser.add_argument("--size", type=int, default=50, help="phonemes per input")
    parser.add_argument("--top", type=int, default=0, help="also list the N commonest kernels")
    parser.add_argument("--random-weights", type=Path, metavar="CONFIG_JSON")
    args = parser.parse_args(argv)
    args.device = "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    with tempfile.TemporaryDirectory(prefix="batched-forward-ops-") as scratch:
        model, pack = load_model(args, Path(scratch))
    print(f"{'batch':>5} {'aten ops':>9} {'kernels':>8} {'per item':>8} {'host reads':>10}")
    for batch in (int(part) for part in args.batch.split(",")):
        texts = [window(args.size, i) for i in range(batch)]
        items = [
            dataclasses.replace(item, generator=None)
            for item in items_of(model, pack, texts, "cpu")
        ]
        counter = OpCounter()
        with counter:
            forward_batch(model, items)
        kernels = sum(counter.kernels.values())
        print(
            f"{batch:>5} {sum(counter.ops.values()):>9} {kernels:>8} {kernels / batch:>8.0f} "
            f"{counter.ops[_HOST_READ]:>10}",
            flush=True,
        )
        for name, count in counter.kernels.most_common(args.top):
            print(f"{'':>7}{name}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
