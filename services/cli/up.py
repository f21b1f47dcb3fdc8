"""`kokoro-pay up`: the whole mesh locally, with a ready-to-use account on first start."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import threading
from pathlib import Path

import grpc

from services.cli.admin import AdminClient
from services.cli.embedded_database import local_database
from services.cli.mesh import SERVICES, LocalMesh
from services.cli.processes import ServiceFailed
from services.common.mesh import (
    HEALTH_PORTS,
    METRICS_PORTS,
    PORTS,
    PREDICTIONS_WORKER_HEALTH_PORT,
    PREDICTIONS_WORKER_METRICS_PORT,
)

LOCAL_ACCOUNT = "local"
LOCAL_CREDITS = 100_000
# Who signs in to the dashboard for the local account (`.test` is a reserved domain).
LOCAL_EMAIL = "local@kokoropay.test"
# The first start's account, key and dashboard password, reused by later starts; owner-only like
# the secrets.
LOCAL_ACCOUNT_FILE = "local-account.json"


async def ensure_local_account(mesh: LocalMesh, data_dir: Path) -> dict[str, str]:
    """The local account's key and dashboard sign-in: created on first start, reused after (a
    revoked key is re-issued)."""
    path = data_dir / LOCAL_ACCOUNT_FILE
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    async with AdminClient(
        mesh.grpc_address("auth"),
        mesh.grpc_address("ledger"),
        mesh.operator_tls,
        mesh.grpc_address("predictions"),
    ) as admin:
        if not (
            saved.get("key")
            and saved.get("key_id")
            and await admin.key_is_live(saved["account_id"], saved["key_id"])
        ):
            try:
                account = await admin.find_account(LOCAL_ACCOUNT)
            except Exception:  # noqa: BLE001 - any lookup failure means: create it
                account, _ = await admin.create_account(LOCAL_ACCOUNT, credits=LOCAL_CREDITS)
            created = await admin.create_key(account.id, name="local run")
            # The same account keeps its person's password; a new one (a fresh database) gets
            # its person below.
            person = saved if saved.get("account_id") == account.id else {}
            saved = {
                "account_id": account.id,
                "key_id": created.key.id,
                "key": created.plaintext,
                **{k: v for k, v in person.items() if k in ("email", "password")},
            }
        if not saved.get("password"):
            saved.update(await _ensure_local_user(admin, saved["account_id"]))
    path.write_text(json.dumps(saved))
    path.chmod(0o600)
    return saved


async def _ensure_local_user(admin: AdminClient, account_id: str) -> dict[str, str]:
    """The local account's dashboard sign-in: created once; if its password was lost with the
    saved file, set a new one."""
    password = secrets.token_urlsafe(12)
    try:
        await admin.create_user(account_id, LOCAL_EMAIL, password)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        await admin.reset_password(LOCAL_EMAIL, password)
    return {"email": LOCAL_EMAIL, "password": password}


def _print_welcome(mesh: LocalMesh, account: dict[str, str]) -> None:
    base = f"{mesh.addresses['gateway']}/v1"
    print(
        f"\nkokoro-pay is up. Base URL {base}\n"
        f"Dashboard {mesh.addresses['dashboard']}/ (sign up, or sign in as {account['email']}"
        f" with password {account['password']})\n"
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
        f"Metrics (Prometheus):\n{_metrics_lines(mesh)}\n\n"
        "Logs: .data/logs/. Press Ctrl-C to stop.",
        flush=True,
    )


def _metrics_lines(mesh: LocalMesh) -> str:
    width = max(len(name) for name in mesh.metrics_addresses)
    return "\n".join(f"  {name:<{width}}  {url}" for name, url in mesh.metrics_addresses.items())


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
            health_ports={**HEALTH_PORTS, "predictions-worker": PREDICTIONS_WORKER_HEALTH_PORT},
            metrics_ports={
                **METRICS_PORTS,
                "predictions-worker": PREDICTIONS_WORKER_METRICS_PORT,
            },
        )
        print(f"starting {', '.join(SERVICES)} (the model takes a while to load)…", flush=True)
        try:
            mesh.start(on_ready=lambda name, t: print(f"  {name} ready ({t:.1f}s)", flush=True))
            _print_welcome(mesh, asyncio.run(ensure_local_account(mesh, data_dir)))
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
