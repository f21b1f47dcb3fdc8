"""Gateway settings, from `GATEWAY_*` environment variables, built once in `main()`."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.mesh import PORTS, local_address
from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "gateway"

    port: int = Field(default=PORTS["gateway"], ge=1, le=65535)
    auth_address: str = Field(default=local_address("auth"), min_length=1)
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    synth_address: str = Field(default=local_address("synth"), min_length=1)
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
    # Margin on every hold's deadline beyond the request's own longest run (see
    # hold_ttl_seconds): settling, its retries included, and clock skew.
    hold_ttl_base_seconds: int = Field(default=300, ge=1, le=6 * 3600)
    # The longest a stream may take per input character once the first audio is out: about
    # four times what a client playing the audio in real time takes.
    hold_ttl_per_char_seconds: float = Field(default=0.25, ge=0, le=60)
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

    def hold_ttl_seconds(self, characters: int) -> int:
        """Seconds the ledger keeps a hold for an input of `characters` code points.

        The hold must outlive the whole request: the wait for the first audio (model queue
        included, up to first_chunk_timeout_seconds), then the longest stream for that input
        (per_char * characters), then settlement (the base margin). A hold that still lapses is
        charged anew at settlement, a last resort only.
        """
        return (
            math.ceil(self.first_chunk_timeout_seconds)
            + math.ceil(self.hold_ttl_per_char_seconds * characters)
            + self.hold_ttl_base_seconds
        )
