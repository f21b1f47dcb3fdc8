"""kokoro-pay: run the local mesh and administer accounts, people, keys and credits over gRPC.

Addresses come from KOKOROPAY_AUTH_ADDRESS / KOKOROPAY_LEDGER_ADDRESS /
KOKOROPAY_PREDICTIONS_ADDRESS (local defaults); the
operator proves itself with its certificate, KOKOROPAY_TLS_DIR or `.data/pki/operator`. Every
failure prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from kokoropay.auth.v1 import auth_pb2

from services.cli.admin import AdminClient
from services.cli.envoy import command as envoy_config
from services.cli.local_pki import CLIENTS, SERVERS, ensure_local_pki
from services.cli.settings import CliSettings
from services.common.identity import ROLES
from services.common.settings import DATA_DIR, load_settings


def _admin() -> AdminClient:
    settings = load_settings(CliSettings)
    return AdminClient(
        settings.auth_address,
        settings.ledger_address,
        settings.tls_identity(),
        settings.predictions_address,
    )


def _describe_balance(balance: Any) -> str:
    suffix = " (unlimited)" if balance.unlimited else ""
    return f"balance {balance.balance} credits, {balance.held} held{suffix}"


async def account_create(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account, balance = await admin.create_account(args.name, args.credits, args.unlimited)
    print(f"account {account.id} '{account.name}': {_describe_balance(balance)}")


async def user_create(args: argparse.Namespace) -> None:
    password = args.password or _generated_password()
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        user = await admin.create_user(account.id, args.email, password)
    print(f"user {user.id} <{user.email}> signs in for account '{account.name}'")
    if not args.password:
        _print_generated(password)


async def user_reset_password(args: argparse.Namespace) -> None:
    password = args.password or _generated_password()
    async with _admin() as admin:
        reset = await admin.reset_password(args.email, password)
    print(f"password of {reset.user.email} set; {reset.ended_sessions} sessions ended")
    if not args.password:
        _print_generated(password)


def _generated_password() -> str:
    # 144 random bits in 24 characters: past guessing, within the 8–128 a password may have.
    return secrets.token_urlsafe(18)


def _print_generated(password: str) -> None:
    print("password (shown once, copy it now):")
    print(password)


async def webhook_secret(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        secret = await admin.webhook_secret(account.id, rotate=args.action == "rotate")
    verb = "new webhook signing secret" if args.action == "rotate" else "webhook signing secret"
    print(f"{verb} of account '{account.name}' (Standard Webhooks; keep it secret):")
    print(secret)


async def key_create(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        created = await admin.create_key(account.id, args.name)
    print(f"key {created.key.id} for account '{account.name}' (shown once, copy it now):")
    print(created.plaintext)


async def key_list(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        keys = await admin.list_keys(account.id)
    print(f"{'ID':<32} {'PREFIX':<16} {'STATE':<8} {'CREATED':<20} NAME")
    for key in keys:
        state = "revoked" if key.HasField("revoke_time") else "live"
        created = key.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{key.id:<32} {key.prefix + '…':<16} {state:<8} {created:<20} {key.name}")


async def key_revoke(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        key = await admin.revoke_key(args.key_id)
    print(f"key {key.id} ({key.prefix}…) revoked")


# The limits each key of an account gets, as `limits` prints and sets them: auth_pb2.KeyLimits'
# fields, each an option of `limits set` (--speech-requests-per-minute, …).
LIMITS = {
    "speech_requests_per_minute": "speech requests per minute",
    "speech_concurrent_streams": "speech streams at once",
    "prediction_creates_per_minute": "prediction creates per minute",
    "predictions_concurrent": "predictions queued or running at once",
}


async def limits_show(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        limits = await admin.get_account_limits(account.id)
    _print_limits(account, limits)


async def limits_set(args: argparse.Namespace) -> None:
    changes = {name: getattr(args, name) for name in LIMITS if getattr(args, name) is not None}
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        limits = await admin.set_account_limits(account.id, **changes)
    _print_limits(account, limits)


def _print_limits(account: auth_pb2.Account, limits: auth_pb2.AccountLimitsResponse) -> None:
    print(f"limits per key of account '{account.name}' ({account.id}):")
    print(f"{'LIMIT':<40}{'IN FORCE':>10}  OVERRIDE")
    for name, label in LIMITS.items():
        override = getattr(limits.overrides, name)
        print(f"{label:<40}{getattr(limits.effective, name):>10}  {override or '(default)'}")


async def credits_grant(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        balance = await admin.grant(account.id, args.amount, args.idempotency_key)
    print(f"granted {args.amount} to '{account.name}': {_describe_balance(balance)}")


async def show_balance(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        account = await admin.find_account(args.account)
        balance = await admin.balance(account.id)
    print(f"'{account.name}' ({account.id}): {_describe_balance(balance)}")


class BooksUnsound(Exception):
    """`ledger verify` found something wrong; what, it has printed."""


async def ledger_verify(args: argparse.Namespace) -> None:
    async with _admin() as admin:
        result = await admin.verify_books()
    print(
        f"checked {result.accounts} accounts and {result.holds} holds"
        f" ({result.expired_holds} overdue holds expired first)"
    )
    for problem in result.discrepancies:
        where = f"hold {problem.hold_id}" if problem.hold_id else f"account {problem.account_id}"
        print(f"{problem.kind}: {where}: {problem.detail}", file=sys.stderr)
    if result.discrepancies:
        raise BooksUnsound(f"{len(result.discrepancies)} discrepancies")
    print("the books balance")


async def cert_issue(args: argparse.Namespace) -> None:
    pki = ensure_local_pki(load_settings(CliSettings).pki_dir)
    folder = pki.issue(args.name, args.role)
    print(
        f"issued {args.role} certificate for {args.name!r} in {folder} (tls.crt, tls.key, ca.crt)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kokoro-pay", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("up", help="run the whole mesh locally (what `make run` runs)")

    account = commands.add_parser("account", help="manage accounts").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = account.add_parser(
        "create",
        help="create an account with optional credits; re-running it for an existing name "
        "finishes an interrupted creation and grants the opening credits only once",
    )
    create.add_argument("name")
    create.add_argument("--credits", type=_non_negative_int, default=0)
    create.add_argument("--unlimited", action="store_true", help="never refuse its requests")
    create.set_defaults(handler=account_create)

    user = commands.add_parser(
        "user", help="manage the people who sign in to the dashboard"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    password_help = (
        "the password, 8 to 128 characters (other local users can see a command line);"
        " omitted, a strong one is generated and printed once, last line"
    )
    user_create_parser = user.add_parser(
        "create", help="give an existing account its person (one per account)"
    )
    user_create_parser.add_argument("account", help="account name or id")
    user_create_parser.add_argument("--email", required=True, help="what they sign in with")
    user_create_parser.add_argument("--password", help=password_help)
    user_create_parser.set_defaults(handler=user_create)
    reset = user.add_parser(
        "reset-password", help="set a person's password and end all their sessions"
    )
    reset.add_argument("email")
    reset.add_argument("--password", help=password_help)
    reset.set_defaults(handler=user_reset_password)

    key = commands.add_parser("key", help="manage API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    key_create_parser = key.add_parser("create", help="issue a key (printed once, last line)")
    key_create_parser.add_argument("account", help="account name or id")
    key_create_parser.add_argument("--name", default="", help="a label for the key")
    key_create_parser.set_defaults(handler=key_create)
    key_list_parser = key.add_parser("list", help="list an account's keys")
    key_list_parser.add_argument("account", help="account name or id")
    key_list_parser.set_defaults(handler=key_list)
    key_revoke_parser = key.add_parser("revoke", help="revoke a key by id")
    key_revoke_parser.add_argument("key_id")
    key_revoke_parser.set_defaults(handler=key_revoke)

    limits = commands.add_parser(
        "limits", help="an account's limits per key (requests per minute, things at once)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    limits_show_parser = limits.add_parser("show", help="the limits in force and the overrides")
    limits_show_parser.add_argument("account", help="account name or id")
    limits_show_parser.set_defaults(handler=limits_show)
    limits_set_parser = limits.add_parser(
        "set", help="override limits for every key of the account; the others stay as they are"
    )
    limits_set_parser.add_argument("account", help="account name or id")
    for name, label in LIMITS.items():
        limits_set_parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=_non_negative_int,
            metavar="N",
            help=f"{label}; 0 goes back to the default",
        )
    limits_set_parser.set_defaults(handler=limits_set)

    webhooks = commands.add_parser(
        "webhook-secret", help="the key an account's prediction webhooks are signed with"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("show", "print the secret (created on first use)"),
        ("rotate", "replace it; webhooks sent from now on use the new one"),
    ):
        parser_ = webhooks.add_parser(action, help=text)
        parser_.add_argument("account", help="account name or id")
        parser_.set_defaults(handler=webhook_secret)

    credits = commands.add_parser("credits", help="manage credits").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    grant = credits.add_parser("grant", help="add credits to an account")
    grant.add_argument("account", help="account name or id")
    grant.add_argument("amount", type=_positive_int)
    grant.add_argument("--idempotency-key", help="makes a retried grant add nothing twice")
    grant.set_defaults(handler=credits_grant)

    balance = commands.add_parser("balance", help="show an account's balance")
    balance.add_argument("account", help="account name or id")
    balance.set_defaults(handler=show_balance)

    ledger = commands.add_parser("ledger", help="the ledger's books").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    verify = ledger.add_parser(
        "verify",
        help="expire overdue holds, then check every balance against its journal and every "
        "hold against its deadline and amount; exits non-zero listing what is wrong",
    )
    verify.set_defaults(handler=ledger_verify)

    cert = commands.add_parser("cert", help="the local mesh's certificates").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    issue = cert.add_parser("issue", help="issue a client certificate from the local CA")
    issue.add_argument("name", type=_identity_name, help="who it is for, e.g. reports")
    issue.add_argument("--role", required=True, choices=sorted(ROLES))
    issue.set_defaults(handler=cert_issue)

    envoy_config.add_parser(commands)
    return parser


def _identity_name(text: str) -> str:
    if not text.replace("-", "").replace("_", "").isalnum() or len(text) > 63:
        raise argparse.ArgumentTypeError("letters, digits, - and _ only, at most 63")
    if text in SERVERS + CLIENTS:
        raise argparse.ArgumentTypeError(f"{text!r} is one of the mesh's own identities")
    return text


def _one_line(error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return "error: cannot reach the kokoro-pay services: is `make run` running?"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "error: the operator certificate was refused: check KOKOROPAY_TLS_DIR"
    return f"error: {error.details() or code.name.lower()}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from services.cli.up import run_up

        return run_up(DATA_DIR)
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, None]] = args.handler
    try:
        asyncio.run(handler(args))
    except grpc.aio.AioRpcError as error:
        print(_one_line(error), file=sys.stderr)
        return 1
    except BooksUnsound as unsound:
        print(f"error: the books do not balance: {unsound}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
