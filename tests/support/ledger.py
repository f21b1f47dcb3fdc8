"""The ledger as the integration tests meet it: a real process on a real socket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from kokoropay.common.v1.access_pb2 import GATEWAY, OPERATOR
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.cli.processes import ServiceProcess
from services.common.access import declared_callers
from tests.support.pki import channel, tls_env

# Who may call what is the certificate's business now; kept so call sites read as before.
ADMIN: tuple[tuple[str, str], ...] = ()
# The RPCs ledger.proto declares for the operator and not for the gateway: the tests call those
# as the operator, everything else as the gateway (read from the declarations, not re-listed).
OPERATOR_METHODS = frozenset(
    method.name
    for method in ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].methods
    if OPERATOR in declared_callers(method) and GATEWAY not in declared_callers(method)
)


def ledger_process(
    database_url: str, log_dir: Path, *, migration_url: str | None = None, **env: str
) -> ServiceProcess:
    """A ledger process (not yet started) serving as `database_url`'s role and migrating as
    `migration_url`'s (the schema's owner), else as the same role; `env` adds LEDGER_* settings."""
    migration = {"LEDGER_MIGRATION_DATABASE_URL": migration_url} if migration_url else {}
    return ServiceProcess(
        "ledger",
        {"DATABASE_URL": database_url, **migration, **tls_env("ledger"), **env},
        log_dir,
    )


def new_account_id() -> str:
    return f"acct_{uuid.uuid4().hex}"


class RoutedLedgerStub:
    """A LedgerService stub that calls each RPC as the caller the mesh would: operator RPCs
    with the operator's certificate, the money path with the gateway's."""

    def __init__(self, operator: grpc.aio.Channel, gateway: grpc.aio.Channel) -> None:
        self._operator = ledger_pb2_grpc.LedgerServiceStub(operator)
        self._gateway = ledger_pb2_grpc.LedgerServiceStub(gateway)

    def __getattr__(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        stub = self._operator if method in OPERATOR_METHODS else self._gateway
        return getattr(stub, method)  # type: ignore[no-any-return]


@asynccontextmanager
async def connected_ledger(address: str) -> AsyncIterator[Ledger]:
    """A `Ledger` over channels to `address` as the operator and as the gateway, closed after."""
    async with channel(address, "operator") as operator, channel(address, "gateway") as gateway:
        yield Ledger(operator, gateway)


class Ledger:
    """A routed stub plus the few steps most tests start with."""

    def __init__(self, operator: grpc.aio.Channel, gateway: grpc.aio.Channel) -> None:
        self.stub = RoutedLedgerStub(operator, gateway)
        # As the gateway calls: for what the routed stub does not cover (health, billing).
        self.gateway_channel = gateway

    async def open_account(self, credits: int = 0) -> str:
        account_id = new_account_id()
        await self.stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id=account_id), metadata=ADMIN
        )
        if credits:
            await self.grant(account_id, credits)
        return account_id

    async def grant(self, account_id: str, amount: int, key: str | None = None) -> None:
        await self.stub.Grant(
            ledger_pb2.GrantRequest(
                account_id=account_id, amount=amount, idempotency_key=key or uuid.uuid4().hex
            ),
            metadata=ADMIN,
        )

    async def balance(self, account_id: str) -> ledger_pb2.GetBalanceResponse:
        return await self.stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id=account_id))

    async def reserve(
        self, account_id: str, amount: int, key: str | None = None, ttl_seconds: int = 0
    ) -> ledger_pb2.Hold:
        response = await self.stub.Reserve(
            ledger_pb2.ReserveRequest(
                account_id=account_id,
                amount=amount,
                idempotency_key=key or uuid.uuid4().hex,
                ttl_seconds=ttl_seconds,
            )
        )
        return response.hold

    async def holds(self, account_id: str) -> list[ledger_pb2.Hold]:
        """The account's holds, the first page (enough for the few a test makes)."""
        response = await self.stub.ListHolds(ledger_pb2.ListHoldsRequest(account_id=account_id))
        return list(response.holds)

    async def entries(self, account_id: str) -> list[ledger_pb2.Entry]:
        """The whole journal, newest first, following page tokens."""
        entries: list[ledger_pb2.Entry] = []
        token = ""
        while True:
            page = await self.stub.ListEntries(
                ledger_pb2.ListEntriesRequest(
                    account_id=account_id, page_size=500, page_token=token
                ),
                metadata=ADMIN,
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries


def spendable_per_journal(entries: list[ledger_pb2.Entry]) -> int:
    """The balance the journal implies: CAPTURE entries report spending but move nothing."""
    return sum(e.amount for e in entries if e.kind != ledger_pb2.ENTRY_KIND_CAPTURE)
