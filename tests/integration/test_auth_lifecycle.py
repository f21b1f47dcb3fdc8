"""How the auth process starts, announces itself, stops, restarts, and refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.errors import error_reason
from services.common.settings import REPO_ROOT
from tests.support.auth import AuthSecrets, start_auth
from tests.support.pki import sync_channel, tls_env

SERVICE = "kokoropay.auth.v1.AuthService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_serving_with_reflection_then_not_serving_on_sigterm(
    database_url: str, log_dir: Path
) -> None:
    auth = start_auth(database_url, AuthSecrets.generate(), log_dir)
    try:
        with sync_channel(auth.address, "operator") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                check = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert check.status == SERVING

            reflected = ProtoReflectionDescriptorDatabase(channel)
            assert SERVICE in reflected.get_services()
            methods = descriptor_pool.DescriptorPool(reflected).FindServiceByName(SERVICE).methods
            assert {m.name for m in methods} >= {"CreateKey", "RevokeKey", "VerifyKey"}

            updates = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=20)
            assert next(updates).status == SERVING
            auth.terminate()
            assert next(updates).status == NOT_SERVING
            # An open Watch is an in-flight RPC; letting it go lets the drain finish early.
            updates.cancel()
        assert auth.process is not None
        assert auth.process.wait(timeout=15) == 0
    finally:
        auth.stop()


def test_keys_survive_a_restart_but_not_a_new_hash_secret(database_url: str, log_dir: Path) -> None:
    auth_secrets = AuthSecrets.generate()
    first = start_auth(database_url, auth_secrets, log_dir)
    try:
        with sync_channel(first.address, "operator") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            account = stub.CreateAccount(
                auth_pb2.CreateAccountRequest(name="durable"), timeout=10
            ).account
            created = stub.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id), timeout=10)
    finally:
        assert first.stop() == 0

    def verify_with(key_hash_secret: str) -> auth_pb2.VerifyKeyResponse:
        restarted = start_auth(database_url, AuthSecrets(key_hash_secret), log_dir)
        try:
            with sync_channel(restarted.address, "gateway") as channel:
                response: auth_pb2.VerifyKeyResponse = auth_pb2_grpc.AuthServiceStub(
                    channel
                ).VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext), timeout=10)
                return response
        finally:
            restarted.stop()

    # Migrations already applied: the second start must find nothing to do and keep the rows.
    assert verify_with(auth_secrets.key_hash_secret).account_id == account.id
    with pytest.raises(grpc.RpcError) as raised:
        verify_with(AuthSecrets.generate().key_hash_secret)
    assert error_reason(raised.value) == "KEY_INVALID"


def _start_up_error(env: dict[str, str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `python -m services.auth` with exactly these settings."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AUTH_") and name != "DATABASE_URL"
    }
    finished = subprocess.run(
        [sys.executable, "-m", "services.auth"],
        cwd=REPO_ROOT,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return finished.returncode, finished.stderr.strip().splitlines()


GOOD = {
    "DATABASE_URL": "postgresql://unused.invalid/db",
    **tls_env("auth"),
    "AUTH_KEY_HASH_SECRET": "a-key-hash-secret-long-enough",
}


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"DATABASE_URL": ""}, "error: invalid settings: DATABASE_URL:"),
        (
            {"AUTH_POOL_MIN_SIZE": "20", "AUTH_POOL_MAX_SIZE": "5"},
            "error: invalid settings: AUTH_POOL_MIN_SIZE exceeds AUTH_POOL_MAX_SIZE",
        ),
        ({"AUTH_KEY_HASH_SECRET": "short"}, "error: the key hash secret must be at least"),
        (
            {"AUTH_KEY_HASH_SECRET": ""},
            "error: auth needs AUTH_KEY_HASH_SECRET or the file .data/key-hash-secret",
        ),
        (
            {"AUTH_TLS_DIR": "/nonexistent/auth-tls"},
            "error: auth has no certificate: /nonexistent/auth-tls/tls.crt is missing",
        ),
    ],
    ids=["no database", "pool sizes", "weak hash secret", "no hash secret", "no certificate"],
)
def test_bad_configuration_stops_start_up_with_one_line(
    overrides: dict[str, str], line: str, tmp_path: Path
) -> None:
    # An empty secrets folder, so a local run's .data/ files cannot supply what is missing.
    status, stderr = _start_up_error({**GOOD, "KOKOROPAY_SECRETS_DIR": str(tmp_path), **overrides})

    assert status != 0
    assert len(stderr) == 1 and stderr[0].startswith(line), stderr
