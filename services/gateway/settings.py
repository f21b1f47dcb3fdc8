"""Gateway settings, from `GATEWAY_*` environment variables, built once in `main()`."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.client_address import Network, parse_networks
from services.common.mesh import PORTS, local_address
from services.common.settings import ServiceSettings

# The local run's dashboard, where a customer buys credits.
DEFAULT_BILLING_URL = f"http://{local_address('dashboard')}/billing"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "gateway"

    port: int = Field(default=PORTS["gateway"], ge=1, le=65535)
    auth_address: str = Field(default=local_address("auth"), min_length=1)
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    synth_address: str = Field(default=local_address("synth"), min_length=1)
    predictions_address: str = Field(default=local_address("predictions"), min_length=1)
    # OpenAI's own limit; longer inputs are refused with 400 before anything is charged.
    max_input_chars: int = Field(default=4096, ge=1, le=1_000_000)
    # Larger request bodies are refused with 413 {"detail": …} before they are read. The default
    # admits 4,096 code points written as \uXXXX surrogate-pair escapes (12 bytes each) plus a
    # full `instructions` field the same way; the Ingress's proxy-body-size (deploy/k8s) stays
    # above it, so clients always get this JSON answer rather than the proxy's HTML page.
    max_body_bytes: int = Field(default=128 * 1024, ge=64 * 1024, le=16 * 1024 * 1024)
    # Spoken when a request names no voice (OpenAI requires one; we are lenient).
    default_voice: str = Field(default="af_heart", min_length=1)
    # Deadline of each auth and ledger call: they are one indexed query each.
    rpc_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Margin on a hold's first deadline beyond the wait for the first audio and one extension
    # (see hold_ttl_seconds): settling once the stream is over, its retries and their
    # deadlines included (about 40 s at worst with the defaults).
    hold_ttl_base_seconds: int = Field(default=60, ge=1, le=6 * 3600)
    # While audio streams, the characters delivered so far are checkpointed on the hold this
    # often (not per piece): what the ledger captures if the gateway dies mid-stream.
    checkpoint_interval_seconds: float = Field(default=5.0, gt=0, le=600)
    # Each checkpoint keeps the hold alive this long from now. Well above the interval, so a
    # ledger that misses a few checkpoints (a restart) does not let a live stream's hold lapse;
    # short enough that a hold whose gateway died is settled within a minute or so.
    hold_extension_seconds: int = Field(default=60, ge=1, le=6 * 3600)
    # The longest a stream may last, from the start of synthesis (the first-audio wait
    # included) to its last byte; then it ends as if the client had left: synthesis stops and
    # the characters delivered are charged. 4,096 characters at speed 0.25 are about 18 minutes
    # of audio (Kokoro speaks about 15 characters a second at speed 1), which a client reading
    # at playback speed takes as long to receive; an hour also covers a CPU that synthesizes it
    # at 0.3x real time (the 2-core CPU of docs/architecture.md manages 2.3x). Every proxy in
    # front (Ingress) and behind (Envoy) allows longer: tests/deploy/test_stream_limits.py.
    max_stream_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    # Pauses between attempts of a settlement (Capture, Release) that failed ambiguously, about
    # 8 s in all: enough to ride out a ledger rolling restart, so completed audio is not left
    # unpaid until the hold's deadline. Their sum must stay well inside hold_ttl_base_seconds.
    settle_retry_delays_seconds: tuple[Annotated[float, Field(ge=0, le=60)], ...] = Field(
        default=(0.25, 0.5, 1.0, 2.0, 4.0), max_length=10
    )
    # How long the first audio may take, waiting for a free model slot included.
    first_chunk_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    # Voices and models change only when synth is redeployed.
    catalog_ttl_seconds: float = Field(default=60.0, ge=0, le=86_400)
    # Longest wait for the client to take one piece of the body; a client that stops reading
    # longer is treated as gone (charged for what it received) and its synth slot freed.
    send_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Budget of each health check behind /readyz.
    ready_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    # The dashboard's billing page, which the 402 answer names so that a customer knows where
    # to top up; empty leaves the contract's sentence without a place.
    billing_url: str = Field(default=DEFAULT_BILLING_URL, max_length=2048)
    # Where clients reach this gateway (e.g. https://api.kokoropay.example), for the absolute
    # URLs in prediction answers (`urls.cancel`); empty: each request's own scheme and Host.
    # Behind a proxy that does not forward its scheme (an Ingress terminating TLS), set it.
    public_url: str = Field(default="", max_length=2048)
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDRs): the
    # Ingress controller's. The client's address is what the invalid-key throttle counts by,
    # so a header from anyone else is ignored: a client could otherwise claim a fresh address
    # per attempt. Empty: every client is its socket's peer.
    trusted_proxies: str = ""
    # An address whose keys failed verification this many times within the window (missing keys
    # do not count; junk that cannot be a key does) gets 429 for every keyed request until the
    # window has passed, without a call to auth: a flood of made-up keys costs auth's database
    # at most this many lookups per address and window, per replica (key_floods.py).
    invalid_keys_per_address: int = Field(default=20, ge=1, le=1_000_000)
    invalid_key_window_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # An operator's switch, not a tuning knob: per-key limits (requests a minute, concurrent
    # streams and predictions; their values are auth's settings and each account's overrides).
    # Off, VerifyKey names no use, so nothing is counted or refused and no x-ratelimit-* header
    # is sent; predictions may have as many queued or running as the service takes (10,000 a
    # key). The bench turns it off to measure what the limits cost.
    key_limits: bool = True

    @field_validator("billing_url", "public_url")
    @classmethod
    def _a_web_address_or_nothing(cls, value: str) -> str:
        # Sent to clients as written: a browser must be able to open it.
        parts = urlsplit(value)
        sound = parts.scheme in ("http", "https") and parts.netloc and value.isprintable()
        if value and (not sound or " " in value):
            raise ValueError(f"must be an absolute http(s) URL without spaces, or empty: {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @model_validator(mode="after")
    def _timings_agree(self) -> Self:
        if self.hold_extension_seconds <= 2 * self.checkpoint_interval_seconds:
            raise ValueError(
                f"{self.env_name('hold_extension_seconds')} must be more than twice "
                f"{self.env_name('checkpoint_interval_seconds')}, so a missed checkpoint is "
                "retried before the hold lapses"
            )
        if self.max_stream_seconds <= self.first_chunk_timeout_seconds:
            raise ValueError(
                f"{self.env_name('max_stream_seconds')} must exceed "
                f"{self.env_name('first_chunk_timeout_seconds')}: the stream limit counts the "
                "wait for the first audio"
            )
        return self

    @property
    def hold_ttl_seconds(self) -> int:
        """Seconds the ledger first keeps a request's hold.

        Only until the stream's checkpoints take over: the wait for the first audio (model
        queue included, at most first_chunk_timeout_seconds), then one extension, which the
        first checkpoint renews before it runs out, then the settling margin (base). The hold
        thus needs no share of the stream's length, and one left behind by a gateway that died
        before its first audio lapses within minutes. A hold that still lapses is charged anew
        at settlement, a last resort only.
        """
        return (
            math.ceil(self.first_chunk_timeout_seconds)
            + self.hold_extension_seconds
            + self.hold_ttl_base_seconds
        )
