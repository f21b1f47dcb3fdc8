"""The operator CLI as an operator runs it: `kokoro-pay …` processes against the live services."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.cli.mesh import LocalMesh
from tests.support.pki import PKI
from tests.support.postgres import create_database

CLI = [sys.executable, "-m", "services.cli.main"]


@pytest.fixture(scope="module")
def mesh(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    data_dir = tmp_path_factory.mktemp("cli-data")
    mesh = LocalMesh(
        data_dir=data_dir,
        database_url=create_database(postgres_url),
        log_dir=data_dir / "logs",
        services=("auth", "ledger"),
    )
    mesh.start()
    yield mesh
    mesh.stop()


def kokoro_pay(
    mesh: LocalMesh, *args: str, as_identity: str = "operator"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KOKOROPAY_AUTH_ADDRESS": mesh.grpc_address("auth"),
        "KOKOROPAY_LEDGER_ADDRESS": mesh.grpc_address("ledger"),
        "KOKOROPAY_PKI_DIR": str(mesh.pki.root),
        "KOKOROPAY_TLS_DIR": str(mesh.pki.folder(as_identity)),
    }
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_account_key_and_credit_lifecycle(mesh: LocalMesh) -> None:
    created = kokoro_pay(mesh, "account", "create", "acme", "--credits", "500")
    assert created.returncode == 0, created.stderr
    assert "balance 500 credits" in created.stdout

    key = kokoro_pay(mesh, "key", "create", "acme", "--name", "ci")
    assert key.returncode == 0, key.stderr
    plaintext = key.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"kp_live_[0-9A-Za-z]{43,}", plaintext), key.stdout
    key_id = re.search(r"key (key_\S+)", key.stdout)
    assert key_id is not None, key.stdout

    listed = kokoro_pay(mesh, "key", "list", "acme")
    assert listed.returncode == 0, listed.stderr
    assert key_id.group(1) in listed.stdout and "live" in listed.stdout
    assert plaintext not in listed.stdout  # never shown again

    revoked = kokoro_pay(mesh, "key", "revoke", key_id.group(1))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in kokoro_pay(mesh, "key", "list", "acme").stdout

    granted = kokoro_pay(mesh, "credits", "grant", "acme", "250")
    assert granted.returncode == 0, granted.stderr
    balance = kokoro_pay(mesh, "balance", "acme")
    assert balance.returncode == 0, balance.stderr
    assert "balance 750 credits" in balance.stdout


def test_a_repeated_grant_with_one_idempotency_key_adds_once(mesh: LocalMesh) -> None:
    assert kokoro_pay(mesh, "account", "create", "retrier").returncode == 0
    for _ in range(2):
        result = kokoro_pay(mesh, "credits", "grant", "retrier", "40", "--idempotency-key", "inv-7")
        assert result.returncode == 0, result.stderr
    assert "balance 40 credits" in kokoro_pay(mesh, "balance", "retrier").stdout


def test_account_create_can_be_rerun_and_grants_the_opening_credits_once(
    mesh: LocalMesh,
) -> None:
    for _ in range(2):
        result = kokoro_pay(mesh, "account", "create", "resumed", "--credits", "70")
        assert result.returncode == 0, result.stderr
        assert "balance 70 credits" in result.stdout


def test_unlimited_accounts_say_so(mesh: LocalMesh) -> None:
    result = kokoro_pay(mesh, "account", "create", "house", "--unlimited")
    assert result.returncode == 0, result.stderr
    assert "(unlimited)" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("balance", "nobody"),
        ("key", "create", "nobody"),
        ("credits", "grant", "nobody", "5"),
        ("key", "revoke", "key_00000000000000000000000000"),
    ],
)
def test_failures_print_one_line_and_exit_non_zero(mesh: LocalMesh, args: tuple[str, ...]) -> None:
    result = kokoro_pay(mesh, *args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def test_bad_arguments_are_refused_before_any_call(mesh: LocalMesh) -> None:
    for args in [
        ("credits", "grant", "acme", "-5"),
        ("account", "create", "x", "--credits", "abc"),
    ]:
        result = kokoro_pay(mesh, *args)
        assert result.returncode == 2
        assert "must be" in result.stderr or "invalid" in result.stderr


def test_a_certificate_that_is_not_the_operators_is_one_clear_line(mesh: LocalMesh) -> None:
    result = kokoro_pay(mesh, "account", "create", "intruder", as_identity="gateway")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the operator certificate was refused: check KOKOROPAY_TLS_DIR"
    )


def test_an_issued_internal_certificate_proves_an_internal_caller(mesh: LocalMesh) -> None:
    issued = kokoro_pay(mesh, "cert", "issue", "reports", "--role", "internal")
    assert issued.returncode == 0, issued.stderr
    assert (mesh.pki.folder("reports") / "tls.key").stat().st_mode & 0o777 == 0o600
    # The ledger knows it as an internal caller, which may not administer accounts.
    refused = kokoro_pay(mesh, "balance", "acme", as_identity="reports")
    assert refused.stderr.strip() == (
        "error: the operator certificate was refused: check KOKOROPAY_TLS_DIR"
    )
    mine = kokoro_pay(mesh, "cert", "issue", "gateway", "--role", "internal")
    assert mine.returncode == 2 and "one of the mesh's own identities" in mine.stderr


def test_services_down_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KOKOROPAY_AUTH_ADDRESS": "127.0.0.1:9",
        "KOKOROPAY_LEDGER_ADDRESS": "127.0.0.1:9",
        "KOKOROPAY_TLS_DIR": str(PKI.folder("operator")),
    }
    result = subprocess.run(
        [*CLI, "balance", "acme"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "is `make run` running?" in result.stderr


def test_no_operator_certificate_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "KOKOROPAY_TLS_DIR": str(tmp_path / "nowhere")}
    result = subprocess.run(
        [*CLI, "balance", "acme"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no operator certificate:")


def test_ledger_verify_says_the_books_balance_and_lists_what_does_not(mesh: LocalMesh) -> None:
    assert kokoro_pay(mesh, "account", "create", "audited", "--credits", "40").returncode == 0
    sound = kokoro_pay(mesh, "ledger", "verify")
    assert sound.returncode == 0, sound.stderr
    assert "the books balance" in sound.stdout

    with psycopg.connect(mesh.databases.owner) as owner:
        # Money that appears without a journal entry: only a hand on the database can do it.
        owner.execute(
            "UPDATE ledger.accounts SET balance = balance + 1"
            " WHERE id = (SELECT id FROM ledger.accounts ORDER BY create_time DESC LIMIT 1)"
        )
    try:
        unsound = kokoro_pay(mesh, "ledger", "verify")
        assert unsound.returncode == 1
        assert "BALANCE_NOT_JOURNAL: account acct_" in unsound.stderr
        assert "error: the books do not balance: 1 discrepancies" in unsound.stderr
    finally:
        with psycopg.connect(mesh.databases.owner) as owner:
            owner.execute(
                "UPDATE ledger.accounts SET balance = balance - 1"
                " WHERE id = (SELECT id FROM ledger.accounts ORDER BY create_time DESC LIMIT 1)"
            )


def test_a_person_is_given_to_an_account_and_their_password_reset(mesh: LocalMesh) -> None:
    # Imported here so that this test stays an addition at the end of the file.
    import grpc
    from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

    from services.common.channels import channel_credentials

    assert kokoro_pay(mesh, "account", "create", "staffed").returncode == 0
    created = kokoro_pay(mesh, "user", "create", "staffed", "--email", "Staff@Example.com")
    assert created.returncode == 0, created.stderr
    assert "<staff@example.com> signs in for account 'staffed'" in created.stdout
    generated = created.stdout.strip().splitlines()[-1]
    assert len(generated) >= 20

    again = kokoro_pay(mesh, "user", "create", "staffed", "--email", "other@example.com")
    assert again.stderr.strip() == "error: the account already has its person"
    short = kokoro_pay(mesh, "user", "reset-password", "staff@example.com", "--password", "short")
    assert short.stderr.strip() == "error: new_password must be at least 8 characters"

    dashboard = grpc.secure_channel(
        mesh.grpc_address("auth"), channel_credentials(mesh.pki.identity("dashboard"))
    )
    with dashboard:
        sign_in = auth_pb2_grpc.AuthServiceStub(dashboard).SignIn
        signed_in = sign_in(
            auth_pb2.SignInRequest(email="staff@example.com", password=generated), timeout=30
        )
        assert signed_in.account.name == "staffed"

        reset = kokoro_pay(mesh, "user", "reset-password", "staff@example.com")
        assert reset.returncode == 0, reset.stderr
        assert "1 sessions ended" in reset.stdout
        new_password = reset.stdout.strip().splitlines()[-1]
        assert new_password != generated
        request = auth_pb2.SignInRequest(email="staff@example.com", password=new_password)
        assert sign_in(request, timeout=30).user.email == "staff@example.com"


def test_an_accounts_limits_are_shown_and_overridden_one_at_a_time(mesh: LocalMesh) -> None:
    assert kokoro_pay(mesh, "account", "create", "limited").returncode == 0
    shown = kokoro_pay(mesh, "limits", "show", "limited")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"speech streams at once\s+8\s+\(default\)", shown.stdout), shown.stdout

    options = ["--speech-concurrent-streams", "3", "--prediction-creates-per-minute", "50"]
    lowered = kokoro_pay(mesh, "limits", "set", "limited", *options)
    assert lowered.returncode == 0, lowered.stderr
    assert re.search(r"speech streams at once\s+3\s+3\n", lowered.stdout), lowered.stdout
    # One option changes one override; 0 sends it back to the default.
    back = kokoro_pay(mesh, "limits", "set", "limited", "--prediction-creates-per-minute", "0")
    assert re.search(r"speech streams at once\s+3\s+3\n", back.stdout), back.stdout
    assert re.search(r"prediction creates per minute\s+100\s+\(default\)", back.stdout)

    too_many = kokoro_pay(mesh, "limits", "set", "limited", "--predictions-concurrent", "10001")
    assert too_many.returncode == 1
    assert too_many.stderr.strip() == (
        "error: overrides.predictions_concurrent must be 0 (the default) or 1 to 10,000"
    )
    assert kokoro_pay(mesh, "limits", "show", "nobody").returncode == 1
