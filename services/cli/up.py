"""`kokoro-pay up`: the whole mesh locally, with a ready-to-use account on first start."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

from services.cli.admin import AdminClient
from services.cli.embedded_database import local_database
from services.cli.mesh import SERVICES, LocalMesh
from services.cli.processes import ServiceFailed
from services.common.mesh import HEALTH_PORTS, PORTS

LOCAL_ACCOUNT = "local"
LOCAL_CREDITS = 100_000
# The first start's account and key, reused by later starts; owner-only like the secrets.
LOCAL_ACCOUNT_FILE = "local-account.json"


async def _ensure_local_account(mesh: LocalMesh, data_dir: Path) -> dict[str, str]:
    """The local account's key: created on first start, reused (or re-issued if revoked)."""
    path = data_dir / LOCAL_ACCOUNT_FILE
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        if saved.get("key") and await admin.key_works(saved["key"]):
            return saved
        try:
            account = await admin.find_account(LOCAL_ACCOUNT)
        except Exception:  # noqa: BLE001 - any lookup failure means: create it
            account, _ = await admin.create_account(LOCAL_ACCOUNT, credits=LOCAL_CREDITS)
        created = await admin.create_key(account.id, name="local run")
    saved = {"account_id": account.id, "key": created.plaintext}
    path.write_text(json.dumps(saved))
    path.chmod(0o600)
    return saved


def _print_welcome(mesh: LocalMesh, account: dict[str, str]) -> None:
    base = f"{mesh.addresses['gateway']}/v1"
    print(
        f"\nkokoro-pay is up. Base URL {base}\n"
        f"Local account '{LOCAL_ACCOUNT}' ({account['account_id']}), key:\n"
        f"  {account['key']}\n\n"
        "Try it:\n"
        f"  curl {base}/audio/speech \\\n"
        f'    -H "Authorization: Bearer {account["key"]}" \\\n'
        '    -H "Content-Type: application/json" \\\n'
        '    -d \'{"model": "kokoro", "input": "Hello from kokoro-pay.", '
        '"voice": "af_sky", "response_format": "mp3"}\' \\\n'
        "    --output speech.mp3\n"
        f'  curl {base}/balance -H "Authorization: Bearer {account["key"]}"\n\n'
        "Logs: .data/logs/. Press Ctrl-C to stop.",
        flush=True,
    )


def run_up(data_dir: Path) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with local_database(data_dir) as database_url:
        mesh = LocalMesh(
            data_dir=data_dir,
            database_url=database_url,
            log_dir=data_dir / "logs",
            ports=PORTS,
            health_ports=HEALTH_PORTS,
        )
        print(f"starting {', '.join(SERVICES)} (the model takes a while to load)…", flush=True)
        try:
            mesh.start(on_ready=lambda name, t: print(f"  {name} ready ({t:.1f}s)", flush=True))
            _print_welcome(mesh, asyncio.run(_ensure_local_account(mesh, data_dir)))
            while not stop.wait(1.0):
                if dead := mesh.exited():
                    print(f"error: {', '.join(dead)} stopped; see .data/logs/", file=sys.stderr)
                    return 1
        except ServiceFailed as error:
            if stop.is_set():  # Ctrl-C during start-up: the services exited on the same signal
                return 0
            print(f"error: {error.summary}", file=sys.stderr)
            return 1
        finally:
            print("stopping…", flush=True)
            mesh.stop()
    print("stopped.")
    return 0
