import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kokoropay.common.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyUse(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_USE_UNSPECIFIED: _ClassVar[KeyUse]
    KEY_USE_SPEECH: _ClassVar[KeyUse]
    KEY_USE_PREDICTION_CREATE: _ClassVar[KeyUse]

class LimitRefusal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_REFUSAL_UNSPECIFIED: _ClassVar[LimitRefusal]
    LIMIT_REFUSAL_REQUESTS: _ClassVar[LimitRefusal]
    LIMIT_REFUSAL_CONCURRENCY: _ClassVar[LimitRefusal]
KEY_USE_UNSPECIFIED: KeyUse
KEY_USE_SPEECH: KeyUse
KEY_USE_PREDICTION_CREATE: KeyUse
LIMIT_REFUSAL_UNSPECIFIED: LimitRefusal
LIMIT_REFUSAL_REQUESTS: LimitRefusal
LIMIT_REFUSAL_CONCURRENCY: LimitRefusal

class Account(_message.Message):
    __slots__ = ("id", "name", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "account_id", "name", "prefix", "create_time", "revoke_time", "last_use_time", "playground")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_TIME_FIELD_NUMBER: _ClassVar[int]
    PLAYGROUND_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    name: str
    prefix: str
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    last_use_time: _timestamp_pb2.Timestamp
    playground: bool
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., name: _Optional[str] = ..., prefix: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_use_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., playground: _Optional[bool] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "account_id", "email", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    email: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., email: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignUpRequest(_message.Message):
    __slots__ = ("email", "password", "client_address")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    client_address: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., client_address: _Optional[str] = ...) -> None: ...

class SignInRequest(_message.Message):
    __slots__ = ("email", "password", "client_address")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    client_address: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ..., client_address: _Optional[str] = ...) -> None: ...

class SignInResponse(_message.Message):
    __slots__ = ("session_token", "user", "account", "idle_expire_time", "expire_time")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    IDLE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    user: User
    account: Account
    idle_expire_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, session_token: _Optional[str] = ..., user: _Optional[_Union[User, _Mapping]] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., idle_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResolveSessionRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class ResolveSessionResponse(_message.Message):
    __slots__ = ("user", "account", "idle_expire_time", "expire_time")
    USER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    IDLE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    user: User
    account: Account
    idle_expire_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., idle_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignOutRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class SignOutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangePasswordRequest(_message.Message):
    __slots__ = ("session_token", "current_password", "new_password")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    current_password: str
    new_password: str
    def __init__(self, session_token: _Optional[str] = ..., current_password: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class ChangePasswordResponse(_message.Message):
    __slots__ = ("ended_sessions",)
    ENDED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ended_sessions: int
    def __init__(self, ended_sessions: _Optional[int] = ...) -> None: ...

class CreateOwnKeyRequest(_message.Message):
    __slots__ = ("session_token", "name")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    name: str
    def __init__(self, session_token: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListOwnKeysRequest(_message.Message):
    __slots__ = ("session_token", "include_playground")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PLAYGROUND_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    include_playground: bool
    def __init__(self, session_token: _Optional[str] = ..., include_playground: _Optional[bool] = ...) -> None: ...

class MintPlaygroundKeyRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class RevokeOwnKeyRequest(_message.Message):
    __slots__ = ("session_token", "key_id")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key_id: str
    def __init__(self, session_token: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("account_id", "email", "password")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    email: str
    password: str
    def __init__(self, account_id: _Optional[str] = ..., email: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class CreateUserResponse(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: User
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ...) -> None: ...

class ResetPasswordRequest(_message.Message):
    __slots__ = ("email", "new_password")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NEW_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    email: str
    new_password: str
    def __init__(self, email: _Optional[str] = ..., new_password: _Optional[str] = ...) -> None: ...

class ResetPasswordResponse(_message.Message):
    __slots__ = ("user", "ended_sessions")
    USER_FIELD_NUMBER: _ClassVar[int]
    ENDED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    user: User
    ended_sessions: int
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., ended_sessions: _Optional[int] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id", "name")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    name: str
    def __init__(self, account_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("account_id", "name")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    name: str
    def __init__(self, account_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "plaintext")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    plaintext: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., plaintext: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class VerifyKeyRequest(_message.Message):
    __slots__ = ("key", "use", "holder")
    KEY_FIELD_NUMBER: _ClassVar[int]
    USE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    key: str
    use: KeyUse
    holder: str
    def __init__(self, key: _Optional[str] = ..., use: _Optional[_Union[KeyUse, str]] = ..., holder: _Optional[str] = ...) -> None: ...

class VerifyKeyResponse(_message.Message):
    __slots__ = ("account_id", "key_id", "admission")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    key_id: str
    admission: Admission
    def __init__(self, account_id: _Optional[str] = ..., key_id: _Optional[str] = ..., admission: _Optional[_Union[Admission, _Mapping]] = ...) -> None: ...

class Admission(_message.Message):
    __slots__ = ("admitted", "refusal", "request_limit", "requests_remaining", "requests_reset", "retry_after", "concurrency_limit", "slot_id", "lease")
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RESET_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    admitted: bool
    refusal: LimitRefusal
    request_limit: int
    requests_remaining: int
    requests_reset: _duration_pb2.Duration
    retry_after: _duration_pb2.Duration
    concurrency_limit: int
    slot_id: str
    lease: _duration_pb2.Duration
    def __init__(self, admitted: _Optional[bool] = ..., refusal: _Optional[_Union[LimitRefusal, str]] = ..., request_limit: _Optional[int] = ..., requests_remaining: _Optional[int] = ..., requests_reset: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., concurrency_limit: _Optional[int] = ..., slot_id: _Optional[str] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReleaseSlotsRequest(_message.Message):
    __slots__ = ("holder", "slot_ids")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    SLOT_IDS_FIELD_NUMBER: _ClassVar[int]
    holder: str
    slot_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, holder: _Optional[str] = ..., slot_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseSlotsResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class RenewSlotsRequest(_message.Message):
    __slots__ = ("holder",)
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    holder: str
    def __init__(self, holder: _Optional[str] = ...) -> None: ...

class RenewSlotsResponse(_message.Message):
    __slots__ = ("renewed", "lease")
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    renewed: int
    lease: _duration_pb2.Duration
    def __init__(self, renewed: _Optional[int] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KeyLimits(_message.Message):
    __slots__ = ("speech_requests_per_minute", "speech_concurrent_streams", "prediction_creates_per_minute", "predictions_concurrent")
    SPEECH_REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_CREATES_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    speech_requests_per_minute: int
    speech_concurrent_streams: int
    prediction_creates_per_minute: int
    predictions_concurrent: int
    def __init__(self, speech_requests_per_minute: _Optional[int] = ..., speech_concurrent_streams: _Optional[int] = ..., prediction_creates_per_minute: _Optional[int] = ..., predictions_concurrent: _Optional[int] = ...) -> None: ...

class GetAccountLimitsRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class SetAccountLimitsRequest(_message.Message):
    __slots__ = ("account_id", "overrides")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    overrides: KeyLimits
    def __init__(self, account_id: _Optional[str] = ..., overrides: _Optional[_Union[KeyLimits, _Mapping]] = ...) -> None: ...

class AccountLimitsResponse(_message.Message):
    __slots__ = ("account_id", "overrides", "effective")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    overrides: KeyLimits
    effective: KeyLimits
    def __init__(self, account_id: _Optional[str] = ..., overrides: _Optional[_Union[KeyLimits, _Mapping]] = ..., effective: _Optional[_Union[KeyLimits, _Mapping]] = ...) -> None: ...
