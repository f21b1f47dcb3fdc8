import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kokoropay.common.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATE_UNSPECIFIED: _ClassVar[HoldState]
    HOLD_STATE_HELD: _ClassVar[HoldState]
    HOLD_STATE_CAPTURED: _ClassVar[HoldState]
    HOLD_STATE_RELEASED: _ClassVar[HoldState]
    HOLD_STATE_EXPIRED: _ClassVar[HoldState]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    ENTRY_KIND_GRANT: _ClassVar[EntryKind]
    ENTRY_KIND_HOLD: _ClassVar[EntryKind]
    ENTRY_KIND_CAPTURE: _ClassVar[EntryKind]
    ENTRY_KIND_RELEASE: _ClassVar[EntryKind]
    ENTRY_KIND_EXPIRE: _ClassVar[EntryKind]
    ENTRY_KIND_UNLIMITED: _ClassVar[EntryKind]
HOLD_STATE_UNSPECIFIED: HoldState
HOLD_STATE_HELD: HoldState
HOLD_STATE_CAPTURED: HoldState
HOLD_STATE_RELEASED: HoldState
HOLD_STATE_EXPIRED: HoldState
ENTRY_KIND_UNSPECIFIED: EntryKind
ENTRY_KIND_GRANT: EntryKind
ENTRY_KIND_HOLD: EntryKind
ENTRY_KIND_CAPTURE: EntryKind
ENTRY_KIND_RELEASE: EntryKind
ENTRY_KIND_EXPIRE: EntryKind
ENTRY_KIND_UNLIMITED: EntryKind

class Hold(_message.Message):
    __slots__ = ("id", "account_id", "amount", "state", "idempotency_key", "expire_time", "create_time", "captured_amount", "checkpointed", "labels", "close_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    amount: int
    state: HoldState
    idempotency_key: str
    expire_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    captured_amount: int
    checkpointed: int
    labels: UsageLabels
    close_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[int] = ..., state: _Optional[_Union[HoldState, str]] = ..., idempotency_key: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., captured_amount: _Optional[int] = ..., checkpointed: _Optional[int] = ..., labels: _Optional[_Union[UsageLabels, _Mapping]] = ..., close_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageLabels(_message.Message):
    __slots__ = ("key_id", "voice", "response_format", "model")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    voice: str
    response_format: str
    model: str
    def __init__(self, key_id: _Optional[str] = ..., voice: _Optional[str] = ..., response_format: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("id", "account_id", "kind", "amount", "balance_after", "hold_id", "idempotency_key", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    account_id: str
    kind: EntryKind
    amount: int
    balance_after: int
    hold_id: str
    idempotency_key: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., account_id: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., amount: _Optional[int] = ..., balance_after: _Optional[int] = ..., hold_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class OpenAccountResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: GetBalanceResponse
    def __init__(self, balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("balance", "held", "unlimited")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    balance: int
    held: int
    unlimited: bool
    def __init__(self, balance: _Optional[int] = ..., held: _Optional[int] = ..., unlimited: _Optional[bool] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("account_id", "amount", "idempotency_key")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    idempotency_key: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GrantSignupBonusRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GrantSignupBonusResponse(_message.Message):
    __slots__ = ("entry", "balance")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    balance: GetBalanceResponse
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("entry", "balance")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    balance: GetBalanceResponse
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ...) -> None: ...

class GrantTopUpRequest(_message.Message):
    __slots__ = ("account_id", "credits", "payment_event_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    credits: int
    payment_event_id: str
    def __init__(self, account_id: _Optional[str] = ..., credits: _Optional[int] = ..., payment_event_id: _Optional[str] = ...) -> None: ...

class GrantTopUpResponse(_message.Message):
    __slots__ = ("entry", "balance", "replayed")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    balance: GetBalanceResponse
    replayed: bool
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class SetUnlimitedRequest(_message.Message):
    __slots__ = ("account_id", "unlimited")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unlimited: bool
    def __init__(self, account_id: _Optional[str] = ..., unlimited: _Optional[bool] = ...) -> None: ...

class SetUnlimitedResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: GetBalanceResponse
    def __init__(self, balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "amount", "idempotency_key", "ttl_seconds", "keyed", "labels")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEYED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    idempotency_key: str
    ttl_seconds: int
    keyed: KeyedRequest
    labels: UsageLabels
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., keyed: _Optional[_Union[KeyedRequest, _Mapping]] = ..., labels: _Optional[_Union[UsageLabels, _Mapping]] = ...) -> None: ...

class KeyedRequest(_message.Message):
    __slots__ = ("key", "fingerprint", "price", "late_charge")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    LATE_CHARGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    fingerprint: str
    price: int
    late_charge: bool
    def __init__(self, key: _Optional[str] = ..., fingerprint: _Optional[str] = ..., price: _Optional[int] = ..., late_charge: _Optional[bool] = ...) -> None: ...

class KeyedAttempt(_message.Message):
    __slots__ = ("replay", "charged_before", "replays_left")
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    CHARGED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    replay: bool
    charged_before: int
    replays_left: int
    def __init__(self, replay: _Optional[bool] = ..., charged_before: _Optional[int] = ..., replays_left: _Optional[int] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("hold", "balance", "replayed", "keyed")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    KEYED_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    balance: GetBalanceResponse
    replayed: bool
    keyed: KeyedAttempt
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ..., replayed: _Optional[bool] = ..., keyed: _Optional[_Union[KeyedAttempt, _Mapping]] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("hold_id", "amount")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    amount: int
    def __init__(self, hold_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("hold_id",)
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    def __init__(self, hold_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("hold_id", "delivered", "extend_seconds")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    EXTEND_SECONDS_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    delivered: int
    extend_seconds: int
    def __init__(self, hold_id: _Optional[str] = ..., delivered: _Optional[int] = ..., extend_seconds: _Optional[int] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Discrepancy(_message.Message):
    __slots__ = ("kind", "account_id", "hold_id", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    account_id: str
    hold_id: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., account_id: _Optional[str] = ..., hold_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("expired_holds", "accounts", "holds", "discrepancies")
    EXPIRED_HOLDS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    DISCREPANCIES_FIELD_NUMBER: _ClassVar[int]
    expired_holds: int
    accounts: int
    holds: int
    discrepancies: _containers.RepeatedCompositeFieldContainer[Discrepancy]
    def __init__(self, expired_holds: _Optional[int] = ..., accounts: _Optional[int] = ..., holds: _Optional[int] = ..., discrepancies: _Optional[_Iterable[_Union[Discrepancy, _Mapping]]] = ...) -> None: ...

class SummarizeUsageRequest(_message.Message):
    __slots__ = ("account_id", "days")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    days: int
    def __init__(self, account_id: _Optional[str] = ..., days: _Optional[int] = ...) -> None: ...

class DailyKeyUsage(_message.Message):
    __slots__ = ("day", "key_id", "characters", "requests")
    DAY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    day: str
    key_id: str
    characters: int
    requests: int
    def __init__(self, day: _Optional[str] = ..., key_id: _Optional[str] = ..., characters: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class SummarizeUsageResponse(_message.Message):
    __slots__ = ("usage", "first_day")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FIRST_DAY_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[DailyKeyUsage]
    first_day: str
    def __init__(self, usage: _Optional[_Iterable[_Union[DailyKeyUsage, _Mapping]]] = ..., first_day: _Optional[str] = ...) -> None: ...

class ListHoldsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHoldsResponse(_message.Message):
    __slots__ = ("holds", "next_page_token")
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[Hold]
    next_page_token: str
    def __init__(self, holds: _Optional[_Iterable[_Union[Hold, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
