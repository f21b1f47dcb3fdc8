"""synth's settings, from `SYNTH_*` environment variables, built once in `main()`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.mesh import PORTS
from services.common.settings import GrpcServiceSettings

# Kokoro's voice tensors hold one style vector per input length, 1..510 phonemes: no chunk may
# be longer, whatever the settings say.
MODEL_MAX_PHONEMES = 510
# Later chunks' budget when SYNTH_CHUNK_PHONEMES is unset. On a CPU the model's time per phoneme
# is the same at 50, 100 and 200 phonemes (services/synth/README.md, "Chunks"): longer chunks buy
# no throughput there, and every later call stays about as long as a first one, which is what a
# new request may wait behind. On a GPU a call's fixed cost dominates: fewer, longer calls.
CPU_CHUNK_PHONEMES = 50
CUDA_CHUNK_PHONEMES = 200


class SynthSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SYNTH_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "synth"

    port: int = Field(default=PORTS["synth"], ge=1, le=65535)
    # A folder in hexgrad's layout (config.json, kokoro-v1_0.pth, voices/*.pt); unset means the
    # weights `make weights` resolved under .data/weights.
    weights_dir: Path | None = None
    # auto: CUDA when torch sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Model calls running at once (model workers); every open stream's next chunk waits for
    # one, first chunks first. One uses every CPU core.
    max_concurrent: int = Field(default=1, ge=1, le=64)
    # torch intra-op threads; 0 keeps torch's default (one per core).
    torch_threads: int = Field(default=0, ge=0, le=256)
    # Longer inputs are refused with RESOURCE_EXHAUSTED.
    max_input_chars: int = Field(default=20_000, ge=1, le=1_000_000)
    # Phonemes of clauses the first chunk packs: small, so the first audio comes after one short
    # model call. A first clause longer than this is the first chunk on its own, whole.
    first_chunk_phonemes: int = Field(default=50, ge=10, le=MODEL_MAX_PHONEMES)
    # Phonemes of clauses later chunks pack, doubling from the first's up to this; unset:
    # CPU_CHUNK_PHONEMES on a CPU, CUDA_CHUNK_PHONEMES on CUDA (`chunk_budget`).
    chunk_phonemes: int | None = Field(default=None, ge=10, le=MODEL_MAX_PHONEMES)
    # Chunks a stream may have spoken that its caller has not yet encoded and sent; bounds
    # memory for slow clients (1: the next model call starts once the chunk before is sent).
    lookahead_chunks: int = Field(default=1, ge=1, le=16)
    # Synthesize a sentence at start-up so the first request does not pay for lazy setup.
    warm_up: bool = True
    # Batched model calls (decision 0021): a free worker speaks the next chunk of every waiting
    # stream in one padded call. auto: on CUDA, off on a CPU, where a batch costs as much as its
    # inputs one by one and a new stream's first chunk would wait for its neighbours'.
    batching: Literal["auto", "on", "off"] = "auto"
    # Padded phonemes per batch: inputs x the longest (its two boundary tokens included).
    batch_max_phonemes: int = Field(default=16_384, ge=MODEL_MAX_PHONEMES + 2, le=1_048_576)
    # How long a free worker waits for more chunks before it starts a batch with room left.
    batch_wait_ms: float = Field(default=2.0, ge=0, le=100)
    # Streams per batch; with max_concurrent workers, the streams the engine runs at once.
    batch_max_streams: int = Field(default=32, ge=1, le=1024)

    @field_validator("chunk_phonemes")
    @classmethod
    def _not_below_the_first_chunk(cls, value: int | None, info: ValidationInfo) -> int | None:
        first = info.data.get("first_chunk_phonemes")
        if first is not None and value is not None and value < first:
            raise ValueError(f"must be at least SYNTH_FIRST_CHUNK_PHONEMES ({first})")
        return value

    def chunk_budget(self, device: str) -> int:
        """Later chunks' budget on `device` (cpu, cuda, cuda:N)."""
        if self.chunk_phonemes is not None:
            return self.chunk_phonemes
        default = CUDA_CHUNK_PHONEMES if device.startswith("cuda") else CPU_CHUNK_PHONEMES
        return max(default, self.first_chunk_phonemes)

    def batching_on(self, device: str) -> bool:
        """Whether model calls are batched on `device` (cpu, cuda, cuda:N)."""
        if self.batching == "auto":
            return device.startswith("cuda")
        return self.batching == "on"
