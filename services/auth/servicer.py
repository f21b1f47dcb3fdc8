"""AuthService over gRPC: validates requests, then asks the store (or, for people and their
sessions, people.py, which adds passwords and throttling on top of it).

Input is checked completely before anything is written, so a refused request leaves the
database as it was. Handlers raise; `ERRORS` is the one table that turns what they raise into a
status (services/common/errors.py). Who may call each RPC is declared in auth.proto. Every
refusal the dashboard shows a person carries an ErrorInfo (domain `auth.kokoropay`) with a
reason; metadata says more: `field` names a bad field, `retry_after_seconds` when a throttled
attempt may come again, `limit` the most live keys an account may hold.

A session's playground key (MintPlaygroundKey) is an API key like any other to the gateway, but
it verifies only while its session lives and its person can neither see it (ListOwnKeys without
include_playground), revoke it, nor count it against their limit. The operator's ListKeys lists
it (`playground` set) and RevokeKey revokes it. Listed, it carries as `revoke_time` the moment
it stopped verifying: its revocation or its session's end, whichever came first.

| refusal                           | status              | reason                    |
|-----------------------------------|---------------------|---------------------------|
| a malformed field                 | INVALID_ARGUMENT    | FIELD_INVALID             |
| an account name already taken     | ALREADY_EXISTS      |                           |
| an email already taken            | ALREADY_EXISTS      | EMAIL_TAKEN               |
| an account with its person        | ALREADY_EXISTS      | ACCOUNT_HAS_USER          |
| no such account, key, person      | NOT_FOUND           |                           |
| a playground key (RevokeOwnKey)   | NOT_FOUND           |                           |
| an account at its live-key limit  | FAILED_PRECONDITION | KEY_LIMIT_REACHED         |
| a key that does not verify        | UNAUTHENTICATED     | KEY_INVALID / KEY_REVOKED |
| a playground key, session ended   | UNAUTHENTICATED     | KEY_REVOKED               |
| wrong password or email           | UNAUTHENTICATED     | CREDENTIALS_INVALID       |
| a session that is not open        | UNAUTHENTICATED     | SESSION_INVALID           |
| an address past its sign-ins      | RESOURCE_EXHAUSTED  | SIGN_IN_THROTTLED         |
| an address past its sign-ups      | RESOURCE_EXHAUSTED  | SIGN_UP_THROTTLED         |
| a session past its password tries | RESOURCE_EXHAUSTED  | PASSWORD_CHANGE_THROTTLED |
| the database out of reach         | UNAVAILABLE         |                           |
| a request over its key's limits   | OK, admitted false  | (Admission.refusal)       |

VerifyKey with a `use` also admits the request under its key's limits (limits.py): the key is
valid, so a request over a limit is answered OK with `admission.admitted` false and the counts
the gateway needs for its headers, never RESOURCE_EXHAUSTED. An unknown `use`, or speech without
a well-formed `holder`, is INVALID_ARGUMENT before the key is looked up; a key that does not
verify is UNAUTHENTICATED as ever, and nothing is counted for it. What VerifyKey made of each key
and of each request under its limits is counted in metrics.py, never by key or account.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth import ids, metrics
from services.auth.keys import (
    DEFAULT_MAX_KEYS_PER_ACCOUNT,
    KeyHasher,
    generate_key,
    looks_like_key,
)
from services.auth.limits import (
    DEFAULT_POLICY,
    LIMIT_FIELDS,
    MAX_RELEASED_SLOTS,
    Admission,
    KeyLimits,
    KeyUse,
    LimitPolicy,
    Refusal,
    admission,
    holder_problem,
    limit_problem,
)
from services.auth.passwords import (
    MAX_PASSWORD_LENGTH,
    email_problem,
    normalize_email,
    password_problem,
)
from services.auth.people import CredentialsInvalid, People, SessionInvalid, SignedIn
from services.auth.sessions import DEFAULT_IDLE
from services.auth.store import (
    Account,
    AccountHasUser,
    AccountNameTaken,
    ApiKey,
    AuthStore,
    EmailTaken,
    KeyLimitReached,
    KeyMatch,
    Session,
    User,
)
from services.auth.throttle import Throttled, address_problem
from services.common.errors import (
    ErrorTable,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.common.timestamps import timestamp

SERVICE_NAME: str = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
MAX_NAME_LENGTH = 64
# Every playground key's name: the dashboard shows it as such, whatever it is called.
PLAYGROUND_KEY_NAME = "Playground"


class KeyRejected(ServiceError):
    """A presented API key that does not resolve to a live key."""


class FieldInvalid(InvalidArgument):
    """A request field that is missing or malformed; metadata `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}", reason="FIELD_INVALID", metadata={"field": field})


ERRORS = ErrorTable(
    "auth",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        AccountNameTaken: grpc.StatusCode.ALREADY_EXISTS,
        EmailTaken: grpc.StatusCode.ALREADY_EXISTS,
        AccountHasUser: grpc.StatusCode.ALREADY_EXISTS,
        NotFound: grpc.StatusCode.NOT_FOUND,
        KeyLimitReached: grpc.StatusCode.FAILED_PRECONDITION,
        KeyRejected: grpc.StatusCode.UNAUTHENTICATED,
        CredentialsInvalid: grpc.StatusCode.UNAUTHENTICATED,
        SessionInvalid: grpc.StatusCode.UNAUTHENTICATED,
        Throttled: grpc.StatusCode.RESOURCE_EXHAUSTED,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
    },
)


def name_problem(name: str, *, required: bool) -> str | None:
    """Why `name` cannot be an account or key name, or None when it can."""
    if not name:
        return "is required" if required else None
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return "must contain only printable characters"
    if name != name.strip():
        return "must not start or end with whitespace"
    return None


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        store: AuthStore,
        hasher: KeyHasher,
        people: People | None = None,
        *,
        max_keys_per_account: int = DEFAULT_MAX_KEYS_PER_ACCOUNT,
        session_idle: timedelta = DEFAULT_IDLE,
        limits: LimitPolicy = DEFAULT_POLICY,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._people_or_none = people
        self._max_keys_per_account = max_keys_per_account
        # How long an unused session lives (AUTH_SESSION_IDLE_SECONDS), which a playground key
        # does not outlive: the same value People resolves sessions with.
        self._session_idle = session_idle
        # Each key's limits unless its account overrides them, and how slots are leased.
        self._limits = limits

    @property
    def _people(self) -> People:
        if self._people_or_none is None:
            raise RuntimeError("AuthServicer was built without People")
        return self._people_or_none

    # --- the operator's accounts and keys; the gateway's VerifyKey ---------------------------

    async def CreateAccount(
        self, request: auth_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateAccountResponse:
        _check_name("name", request.name, required=True)
        account = await self._store.create_account(request.name)
        return auth_pb2.CreateAccountResponse(account=_account_message(account))

    async def GetAccount(
        self, request: auth_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetAccountResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "account_id":
            _check_account_id(request.account_id)
            account = await self._store.get_account_by_id(request.account_id)
        elif lookup == "name":
            _check_name("name", request.name, required=True)
            account = await self._store.get_account_by_name(request.name)
        else:
            raise InvalidArgument("set account_id or name")
        return auth_pb2.GetAccountResponse(account=_account_message(account))

    async def CreateKey(
        self, request: auth_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        _check_account_id(request.account_id)
        _check_name("name", request.name, required=False)
        return await self._create_key(request.account_id, request.name)

    async def ListKeys(
        self, request: auth_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        _check_account_id(request.account_id)
        # The operator sees every key that can spend the account's credits.
        return await self._list_keys(request.account_id, playground=True)

    async def RevokeKey(
        self, request: auth_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeKeyResponse:
        _check_key_id(request.key_id)
        # A playground key too: how an operator stops one before its session ends.
        key = await self._store.revoke_key(request.key_id, session_idle=self._session_idle)
        return auth_pb2.RevokeKeyResponse(key=_key_message(key))

    async def VerifyKey(
        self, request: auth_pb2.VerifyKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyKeyResponse:
        use = _checked_use(request.use)
        holder = _checked_holder(request.holder) if use is KeyUse.SPEECH else None
        # Strings that cannot be keys are answered here, so floods of junk never reach the pool.
        if not looks_like_key(request.key):
            metrics.count_key_check("invalid")
            raise KeyRejected("invalid API key", reason="KEY_INVALID")
        key_hash = self._hasher.hash(request.key)
        if use is None:
            match = _verified(await self._store.find_key(key_hash, session_idle=self._session_idle))
            return auth_pb2.VerifyKeyResponse(account_id=match.account_id, key_id=match.key_id)

        # The slot's id is drawn whether or not a slot is free: the statement decides.
        slot_id = ids.new_id(ids.SLOT)
        found = await self._store.admit_key(
            key_hash,
            session_idle=self._session_idle,
            use=use,
            defaults=self._limits.defaults,
            holder=holder,
            slot_id=slot_id,
            lease=self._limits.lease,
        )
        match = _verified(found.match if found is not None else None)
        if found is None or found.counted is None:
            raise AssertionError("a live key's request was not counted")
        admitted = admission(use, found.counted, slot_id, self._limits)
        metrics.count_admission(_USE_LABELS[use], _admission_outcome(admitted))
        return auth_pb2.VerifyKeyResponse(
            account_id=match.account_id,
            key_id=match.key_id,
            admission=_admission_message(admitted),
        )

    async def ReleaseSlots(
        self, request: auth_pb2.ReleaseSlotsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ReleaseSlotsResponse:
        holder = _checked_holder(request.holder)
        slot_ids = list(request.slot_ids)
        if len(slot_ids) > MAX_RELEASED_SLOTS:
            raise FieldInvalid("slot_ids", f"must name at most {MAX_RELEASED_SLOTS:,} slots")
        if not all(ids.is_id(ids.SLOT, slot_id) for slot_id in slot_ids):
            raise FieldInvalid("slot_ids", "must all be slot ids (slot_…)")
        released = await self._store.release_slots(holder, slot_ids) if slot_ids else 0
        return auth_pb2.ReleaseSlotsResponse(released=released)

    async def RenewSlots(
        self, request: auth_pb2.RenewSlotsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RenewSlotsResponse:
        holder = _checked_holder(request.holder)
        renewed = await self._store.renew_slots(holder, self._limits.lease)
        return auth_pb2.RenewSlotsResponse(renewed=renewed, lease=_duration(self._limits.lease))

    async def GetAccountLimits(
        self, request: auth_pb2.GetAccountLimitsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AccountLimitsResponse:
        _check_account_id(request.account_id)
        overrides = await self._store.account_limits(request.account_id)
        return self._account_limits_message(request.account_id, overrides)

    async def SetAccountLimits(
        self, request: auth_pb2.SetAccountLimitsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AccountLimitsResponse:
        _check_account_id(request.account_id)
        overrides = _checked_overrides(request.overrides)
        stored = await self._store.set_account_limits(request.account_id, overrides)
        return self._account_limits_message(request.account_id, stored)

    def _account_limits_message(
        self, account_id: str, overrides: KeyLimits
    ) -> auth_pb2.AccountLimitsResponse:
        return auth_pb2.AccountLimitsResponse(
            account_id=account_id,
            overrides=_key_limits_message(overrides),
            effective=_key_limits_message(self._limits.defaults.overridden_by(overrides)),
        )

    # --- the dashboard: people and their sessions --------------------------------------------

    async def SignUp(
        self, request: auth_pb2.SignUpRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignInResponse:
        email = _checked_email(request.email)
        _check_new_password("password", request.password)
        _check_client_address(request.client_address)
        signed_in = await self._people.sign_up(email, request.password, request.client_address)
        return _signed_in_message(signed_in)

    async def SignIn(
        self, request: auth_pb2.SignInRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignInResponse:
        email = _checked_email(request.email)
        _check_given_password("password", request.password)
        _check_client_address(request.client_address)
        signed_in = await self._people.sign_in(email, request.password, request.client_address)
        return _signed_in_message(signed_in)

    async def ResolveSession(
        self, request: auth_pb2.ResolveSessionRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ResolveSessionResponse:
        session = await self._people.resolve(request.session_token)
        return auth_pb2.ResolveSessionResponse(
            user=_user_message(session.user),
            account=_account_message(session.account),
            idle_expire_time=timestamp(session.idle_expire_time),
            expire_time=timestamp(session.expire_time),
        )

    async def SignOut(
        self, request: auth_pb2.SignOutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignOutResponse:
        await self._people.sign_out(request.session_token)
        return auth_pb2.SignOutResponse()

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ChangePasswordResponse:
        _check_given_password("current_password", request.current_password)
        _check_new_password("new_password", request.new_password)
        ended = await self._people.change_password(
            request.session_token, request.current_password, request.new_password
        )
        return auth_pb2.ChangePasswordResponse(ended_sessions=ended)

    async def CreateOwnKey(
        self, request: auth_pb2.CreateOwnKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        _check_name("name", request.name, required=True)
        session = await self._people.resolve(request.session_token)
        return await self._create_key(session.account.id, request.name)

    async def ListOwnKeys(
        self, request: auth_pb2.ListOwnKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        session = await self._people.resolve(request.session_token)
        return await self._list_keys(session.account.id, playground=request.include_playground)

    async def RevokeOwnKey(
        self, request: auth_pb2.RevokeOwnKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeKeyResponse:
        _check_key_id(request.key_id)
        session = await self._people.resolve(request.session_token)
        key = await self._store.revoke_key(
            request.key_id, account_id=session.account.id, session_idle=self._session_idle
        )
        return auth_pb2.RevokeKeyResponse(key=_key_message(key))

    async def MintPlaygroundKey(
        self, request: auth_pb2.MintPlaygroundKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        # Resolving counts as the session's use, as any dashboard call does. The key is derived
        # from the token (keys.py), so this call and every later one hand out the same plaintext
        # without the database keeping it.
        session = await self._people.resolve(request.session_token)
        new_key = self._hasher.playground_key(request.session_token)
        key = await self._store.playground_key(
            session.id,
            new_key.visible_prefix,
            self._hasher.hash(new_key.plaintext),
            name=PLAYGROUND_KEY_NAME,
            session_idle=self._session_idle,
        )
        return auth_pb2.CreateKeyResponse(key=_key_message(key), plaintext=new_key.plaintext)

    # --- the operator's people ---------------------------------------------------------------

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateUserResponse:
        _check_account_id(request.account_id)
        email = _checked_email(request.email)
        _check_new_password("password", request.password)
        user = await self._people.create_user(request.account_id, email, request.password)
        return auth_pb2.CreateUserResponse(user=_user_message(user))

    async def ResetPassword(
        self, request: auth_pb2.ResetPasswordRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ResetPasswordResponse:
        email = _checked_email(request.email)
        _check_new_password("new_password", request.new_password)
        user, ended = await self._people.reset_password(email, request.new_password)
        return auth_pb2.ResetPasswordResponse(user=_user_message(user), ended_sessions=ended)

    # --- shared by the operator's and the dashboard's key RPCs -------------------------------

    async def _create_key(self, account_id: str, name: str) -> auth_pb2.CreateKeyResponse:
        new_key = generate_key()
        key = await self._store.create_key(
            account_id,
            name,
            new_key.visible_prefix,
            self._hasher.hash(new_key.plaintext),
            limit=self._max_keys_per_account,
        )
        return auth_pb2.CreateKeyResponse(key=_key_message(key), plaintext=new_key.plaintext)

    async def _list_keys(self, account_id: str, *, playground: bool) -> auth_pb2.ListKeysResponse:
        keys = await self._store.list_keys(
            account_id, playground=playground, session_idle=self._session_idle
        )
        return auth_pb2.ListKeysResponse(keys=[_key_message(key) for key in keys])


def _check_name(field: str, value: str, *, required: bool) -> None:
    problem = name_problem(value, required=required)
    if problem is not None:
        raise FieldInvalid(field, problem)


def _check_account_id(account_id: str) -> None:
    _check_id("account_id", account_id, ids.ACCOUNT, "an account id (acct_…)")


def _check_key_id(key_id: str) -> None:
    _check_id("key_id", key_id, ids.KEY, "a key id (key_…)")


def _verified(match: KeyMatch | None) -> KeyMatch:
    """The key found, if it verifies; else KeyRejected. Counted either way."""
    if match is None:
        metrics.count_key_check("invalid")
        raise KeyRejected("invalid API key", reason="KEY_INVALID")
    if match.revoked:  # a playground key's ended session included
        metrics.count_key_check("revoked")
        raise KeyRejected("API key has been revoked", reason="KEY_REVOKED")
    metrics.count_key_check("valid")
    return match


# The metrics' names for each use, and for what the limits made of a request.
_USE_LABELS = {KeyUse.SPEECH: "speech", KeyUse.PREDICTION_CREATE: "prediction_create"}
_REFUSAL_LABELS = {
    Refusal.REQUESTS: "requests_limited",
    Refusal.CONCURRENCY: "concurrency_limited",
}


def _admission_outcome(admitted: Admission) -> str:
    return "admitted" if admitted.refusal is None else _REFUSAL_LABELS[admitted.refusal]


def _checked_use(value: int) -> KeyUse | None:
    """The request's use; None for KEY_USE_UNSPECIFIED (verification only)."""
    if value == auth_pb2.KEY_USE_UNSPECIFIED:
        return None
    try:
        return KeyUse(value)
    except ValueError:
        raise FieldInvalid("use", "is not a known KeyUse") from None


def _checked_holder(holder: str) -> str:
    problem = holder_problem(holder)
    if problem is not None:
        raise FieldInvalid("holder", problem)
    return holder


def _checked_overrides(message: auth_pb2.KeyLimits) -> KeyLimits:
    overrides = KeyLimits(**{name: getattr(message, name) for name in LIMIT_FIELDS})
    for name in LIMIT_FIELDS:
        problem = limit_problem(name, getattr(overrides, name), override=True)
        if problem is not None:
            raise FieldInvalid(f"overrides.{name}", problem)
    return overrides


def _check_id(field: str, value: str, prefix: str, kind: str) -> None:
    if not value:
        raise FieldInvalid(field, "is required")
    if not ids.is_id(prefix, value):
        raise FieldInvalid(field, f"is not {kind}")


def _checked_email(raw: str) -> str:
    """The email as stored (trimmed, lower-cased), or FieldInvalid."""
    email = normalize_email(raw)
    problem = email_problem(email)
    if problem is not None:
        raise FieldInvalid("email", problem)
    return email


def _check_new_password(field: str, password: str) -> None:
    problem = password_problem(password)
    if problem is not None:
        raise FieldInvalid(field, problem)


def _check_given_password(field: str, password: str) -> None:
    """A password to check rather than set: any length a password may have, so an old
    shorter one still works, but nothing a password cannot be."""
    if not password:
        raise FieldInvalid(field, "is required")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise FieldInvalid(field, f"must be at most {MAX_PASSWORD_LENGTH} characters")


def _check_client_address(address: str) -> None:
    problem = address_problem(address)
    if problem is not None:
        raise FieldInvalid("client_address", problem)


def _account_message(account: Account) -> auth_pb2.Account:
    return auth_pb2.Account(
        id=account.id, name=account.name, create_time=timestamp(account.create_time)
    )


def _user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id,
        account_id=user.account_id,
        email=user.email,
        create_time=timestamp(user.create_time),
    )


def _signed_in_message(signed_in: SignedIn) -> auth_pb2.SignInResponse:
    session: Session = signed_in.session
    return auth_pb2.SignInResponse(
        session_token=signed_in.token,
        user=_user_message(session.user),
        account=_account_message(session.account),
        idle_expire_time=timestamp(session.idle_expire_time),
        expire_time=timestamp(session.expire_time),
    )


def _duration(span: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(span)
    return duration


_REFUSALS = {
    None: auth_pb2.LIMIT_REFUSAL_UNSPECIFIED,
    Refusal.REQUESTS: auth_pb2.LIMIT_REFUSAL_REQUESTS,
    Refusal.CONCURRENCY: auth_pb2.LIMIT_REFUSAL_CONCURRENCY,
}


def _admission_message(admitted: Admission) -> auth_pb2.Admission:
    message = auth_pb2.Admission(
        admitted=admitted.admitted,
        refusal=_REFUSALS[admitted.refusal],
        request_limit=admitted.request_limit,
        requests_remaining=admitted.requests_remaining,
        requests_reset=_duration(admitted.requests_reset),
        concurrency_limit=admitted.concurrency_limit,
        slot_id=admitted.slot_id or "",
    )
    if admitted.retry_after is not None:
        message.retry_after.CopyFrom(_duration(admitted.retry_after))
    if admitted.lease is not None:
        message.lease.CopyFrom(_duration(admitted.lease))
    return message


def _key_limits_message(limits: KeyLimits) -> auth_pb2.KeyLimits:
    return auth_pb2.KeyLimits(**{name: getattr(limits, name) for name in LIMIT_FIELDS})


def _key_message(key: ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
        playground=key.playground,
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    if key.last_use_time is not None:
        message.last_use_time.CopyFrom(timestamp(key.last_use_time))
    return message
