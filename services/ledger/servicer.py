"""LedgerService over gRPC: checks requests, calls the store, answers in the contract's terms.

Handlers raise; `ERRORS` is the one table that turns what they raise into a status
(services/common/errors.py). Who may call each RPC is declared in ledger.proto. Refusals a
caller branches on carry a google.rpc.ErrorInfo (domain "ledger.kokoropay"):

| refusal                                   | status              | reason                 |
|-------------------------------------------|---------------------|------------------------|
| balance too low for Reserve               | FAILED_PRECONDITION | INSUFFICIENT_CREDITS   |
| Release of a captured hold                | FAILED_PRECONDITION | HOLD_CAPTURED          |
| Capture of a released hold                | FAILED_PRECONDITION | HOLD_RELEASED          |
| Capture of an expired hold                | FAILED_PRECONDITION | HOLD_EXPIRED           |
| Capture again, of another amount          | FAILED_PRECONDITION | HOLD_CAPTURED          |
| idempotency key reused with another amount| ALREADY_EXISTS      | IDEMPOTENCY_KEY_REUSED |
| top-up whose key another grant holds      | ALREADY_EXISTS      | IDEMPOTENCY_KEY_REUSED |
| keyed request: key names another request  | ALREADY_EXISTS      | REQUEST_KEY_REUSED     |
| keyed request: an attempt still held      | FAILED_PRECONDITION | ATTEMPT_IN_PROGRESS    |
| keyed request: paid and replayed enough   | FAILED_PRECONDITION | REQUEST_COMPLETED      |

IDEMPOTENCY_KEY_REUSED is ALREADY_EXISTS rather than FAILED_PRECONDITION: retrying cannot help
and the key, not the balance, is at fault, so a caller (or the gateway's status table) that
reads only the code never mistakes it for insufficient credits. Bad fields are INVALID_ARGUMENT,
unknown accounts and holds NOT_FOUND, and neither writes anything.

A payment event comes again (GrantTopUp) as an answer, not a refusal: the first grant, with
`replayed`, whichever account it credited; the balance is the asking account's.

Usage (SummarizeUsage, ListHolds) is read from the holds, which keep the labels their Reserve
gave: the report of what a key spent is the money itself, not a second count beside it.
"""

from __future__ import annotations

import grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.common.errors import ErrorTable, InvalidArgument, NotFound, Unavailable
from services.common.timestamps import timestamp as _timestamp
from services.ledger import validation
from services.ledger.paging import (
    decode_holds_page_token,
    decode_page_token,
    encode_holds_page_token,
    encode_page_token,
)
from services.ledger.settings import LedgerSettings
from services.ledger.store import (
    AttemptInProgress,
    Balance,
    Entry,
    Hold,
    HoldClosed,
    IdempotencyKeyReused,
    InsufficientCredits,
    LedgerStore,
    RequestCompleted,
    RequestKeyReused,
    TopUpKeyTaken,
    UsageLabels,
)

SERVICE_NAME: str = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name

# The idempotency key of every account's sign-up grant.
SIGNUP_GRANT_KEY = "kokoropay:signup-bonus"

ERRORS = ErrorTable(
    "ledger",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,  # CaptureExceedsHold included
        NotFound: grpc.StatusCode.NOT_FOUND,
        InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
        HoldClosed: grpc.StatusCode.FAILED_PRECONDITION,
        IdempotencyKeyReused: grpc.StatusCode.ALREADY_EXISTS,
        TopUpKeyTaken: grpc.StatusCode.ALREADY_EXISTS,
        RequestKeyReused: grpc.StatusCode.ALREADY_EXISTS,
        AttemptInProgress: grpc.StatusCode.FAILED_PRECONDITION,
        RequestCompleted: grpc.StatusCode.FAILED_PRECONDITION,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
    },
)

_HOLD_STATES = {
    "held": ledger_pb2.HOLD_STATE_HELD,
    "captured": ledger_pb2.HOLD_STATE_CAPTURED,
    "released": ledger_pb2.HOLD_STATE_RELEASED,
    "expired": ledger_pb2.HOLD_STATE_EXPIRED,
}
_ENTRY_KINDS = {
    "grant": ledger_pb2.ENTRY_KIND_GRANT,
    "hold": ledger_pb2.ENTRY_KIND_HOLD,
    "capture": ledger_pb2.ENTRY_KIND_CAPTURE,
    "release": ledger_pb2.ENTRY_KIND_RELEASE,
    "expire": ledger_pb2.ENTRY_KIND_EXPIRE,
    "unlimited": ledger_pb2.ENTRY_KIND_UNLIMITED,
}


def balance_message(balance: Balance) -> ledger_pb2.GetBalanceResponse:
    return ledger_pb2.GetBalanceResponse(
        balance=balance.balance, held=balance.held, unlimited=balance.unlimited
    )


def labels_message(labels: UsageLabels) -> ledger_pb2.UsageLabels:
    return ledger_pb2.UsageLabels(
        key_id=labels.key_id or "",
        voice=labels.voice or "",
        response_format=labels.response_format or "",
        model=labels.model or "",
    )


def hold_message(hold: Hold) -> ledger_pb2.Hold:
    message = ledger_pb2.Hold(
        id=hold.id,
        account_id=hold.account_id,
        amount=hold.amount,
        state=_HOLD_STATES[hold.state],
        idempotency_key=hold.idempotency_key,
        expire_time=_timestamp(hold.expire_time),
        create_time=_timestamp(hold.create_time),
        captured_amount=hold.captured or 0,
        checkpointed=hold.checkpointed,
        labels=labels_message(hold.labels),
    )
    if hold.close_time is not None:
        message.close_time.CopyFrom(_timestamp(hold.close_time))
    return message


def entry_message(entry: Entry) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(
        id=entry.id,
        account_id=entry.account_id,
        kind=_ENTRY_KINDS[entry.kind],
        amount=entry.amount,
        balance_after=entry.balance_after,
        hold_id=entry.hold_id or "",
        idempotency_key=entry.idempotency_key or "",
        create_time=_timestamp(entry.create_time),
    )


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, store: LedgerStore, settings: LedgerSettings) -> None:
        self._store = store
        self._default_ttl_seconds = settings.default_hold_ttl_seconds
        self._max_ttl_seconds = settings.max_hold_ttl_seconds
        self._request_key_window_seconds = settings.request_key_window_seconds
        self._max_free_replays = settings.max_free_replays
        self._sweep_batch_size = settings.sweep_batch_size
        self._signup_grant_credits = settings.signup_grant_credits
        self._max_top_up_credits = settings.max_top_up_credits

    async def OpenAccount(
        self, request: ledger_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.OpenAccountResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        balance = await self._store.open_account(account_id)
        return ledger_pb2.OpenAccountResponse(balance=balance_message(balance))

    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GetBalanceResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        return balance_message(await self._store.balance(account_id))

    async def Grant(
        self, request: ledger_pb2.GrantRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GrantResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        amount = validation.require_amount(request.amount)
        key = validation.require_grant_key(request.idempotency_key)
        entry, balance = await self._store.grant(account_id, amount, key)
        return ledger_pb2.GrantResponse(
            entry=entry_message(entry), balance=balance_message(balance)
        )

    async def GrantSignupBonus(
        self, request: ledger_pb2.GrantSignupBonusRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GrantSignupBonusResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        if self._signup_grant_credits == 0:
            balance = await self._store.balance(account_id)
            return ledger_pb2.GrantSignupBonusResponse(balance=balance_message(balance))
        # Grant keys are unique per account, so one fixed key makes a repeat, or a race of
        # repeats, grant once.
        entry, balance = await self._store.grant_once(
            account_id, self._signup_grant_credits, SIGNUP_GRANT_KEY
        )
        return ledger_pb2.GrantSignupBonusResponse(
            entry=entry_message(entry), balance=balance_message(balance)
        )

    async def GrantTopUp(
        self, request: ledger_pb2.GrantTopUpRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.GrantTopUpResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        credits = validation.top_up_credits(request.credits, self._max_top_up_credits)
        event_id = validation.require_payment_event_id(request.payment_event_id)
        entry, balance, replayed = await self._store.top_up(account_id, credits, event_id)
        return ledger_pb2.GrantTopUpResponse(
            entry=entry_message(entry), balance=balance_message(balance), replayed=replayed
        )

    async def SetUnlimited(
        self, request: ledger_pb2.SetUnlimitedRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.SetUnlimitedResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        balance = await self._store.set_unlimited(account_id, request.unlimited)
        return ledger_pb2.SetUnlimitedResponse(balance=balance_message(balance))

    async def Reserve(
        self, request: ledger_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ReserveResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        amount = validation.require_amount(request.amount)
        key = validation.require_key(request.idempotency_key)
        ttl_seconds = validation.hold_ttl(
            request.ttl_seconds, self._default_ttl_seconds, self._max_ttl_seconds
        )
        given = request.labels
        labels = validation.usage_labels(
            given.key_id, given.voice, given.response_format, given.model
        )
        if not request.HasField("keyed"):
            hold, balance, replayed = await self._store.reserve(
                account_id, amount, key, ttl_seconds, labels
            )
            return ledger_pb2.ReserveResponse(
                hold=hold_message(hold), balance=balance_message(balance), replayed=replayed
            )
        keyed = request.keyed
        reservation = await self._store.reserve_keyed(
            account_id,
            amount,
            key,
            ttl_seconds,
            validation.keyed_request(
                keyed.key, keyed.fingerprint, keyed.price, keyed.late_charge, amount
            ),
            window_seconds=self._request_key_window_seconds,
            max_replays=self._max_free_replays,
            labels=labels,
        )
        response = ledger_pb2.ReserveResponse(
            balance=balance_message(reservation.balance),
            replayed=reservation.replayed,
            keyed=ledger_pb2.KeyedAttempt(
                replay=reservation.replay,
                charged_before=reservation.charged_before,
                replays_left=reservation.replays_left,
            ),
        )
        if reservation.hold is not None:
            response.hold.CopyFrom(hold_message(reservation.hold))
        return response

    async def Capture(
        self, request: ledger_pb2.CaptureRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.CaptureResponse:
        hold_id = validation.require_id(request.hold_id, "hold_id")
        amount = validation.capture_amount(request.amount)
        hold = await self._store.capture(hold_id, amount)
        return ledger_pb2.CaptureResponse(hold=hold_message(hold))

    async def Release(
        self, request: ledger_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ReleaseResponse:
        hold_id = validation.require_id(request.hold_id, "hold_id")
        return ledger_pb2.ReleaseResponse(hold=hold_message(await self._store.release(hold_id)))

    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListEntriesResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        page_size = validation.page_size(request.page_size)
        before_id = decode_page_token(request.page_token, account_id)
        # One entry beyond the page says whether another page follows.
        entries = await self._store.entries(account_id, page_size + 1, before_id)
        page = entries[:page_size]
        next_token = encode_page_token(account_id, page[-1].id) if len(entries) > page_size else ""
        return ledger_pb2.ListEntriesResponse(
            entries=[entry_message(entry) for entry in page], next_page_token=next_token
        )

    async def ListHolds(
        self, request: ledger_pb2.ListHoldsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.ListHoldsResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        page_size = validation.page_size(request.page_size, validation.MAX_HOLDS_PAGE_SIZE)
        before = decode_holds_page_token(request.page_token, account_id)
        # One hold beyond the page says whether another page follows.
        holds = await self._store.list_holds(account_id, page_size + 1, before)
        page = holds[:page_size]
        next_token = (
            encode_holds_page_token(account_id, page[-1].create_time, page[-1].id)
            if len(holds) > page_size
            else ""
        )
        return ledger_pb2.ListHoldsResponse(
            holds=[hold_message(hold) for hold in page], next_page_token=next_token
        )

    async def SummarizeUsage(
        self, request: ledger_pb2.SummarizeUsageRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.SummarizeUsageResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        days = validation.usage_days(request.days)
        summary = await self._store.summarize_usage(account_id, days)
        return ledger_pb2.SummarizeUsageResponse(
            usage=[
                ledger_pb2.DailyKeyUsage(
                    day=row.day.isoformat(),
                    key_id=row.key_id,
                    characters=row.characters,
                    requests=row.requests,
                )
                for row in summary.usage
            ],
            first_day=summary.first_day.isoformat(),
        )

    async def Checkpoint(
        self, request: ledger_pb2.CheckpointRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.CheckpointResponse:
        hold_id = validation.require_id(request.hold_id, "hold_id")
        delivered = validation.checkpoint_amount(request.delivered)
        # Never past the longest lifetime a Reserve may ask for, counted from now.
        extend_seconds = min(request.extend_seconds, self._max_ttl_seconds)
        hold = await self._store.checkpoint(hold_id, delivered, extend_seconds)
        return ledger_pb2.CheckpointResponse(hold=hold_message(hold))

    async def Verify(
        self, request: ledger_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.VerifyResponse:
        verification = await self._store.verify(self._sweep_batch_size)
        return ledger_pb2.VerifyResponse(
            expired_holds=verification.expired_holds,
            accounts=verification.accounts,
            holds=verification.holds,
            discrepancies=[
                ledger_pb2.Discrepancy(
                    kind=d.kind, account_id=d.account_id, hold_id=d.hold_id, detail=d.detail
                )
                for d in verification.discrepancies
            ],
        )
