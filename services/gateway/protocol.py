"""The REST contract's bodies as pydantic models: what clients send and what they get back.

Field names, defaults and ranges follow OpenAI's `POST /v1/audio/speech`, so its clients work
unchanged. Unknown fields are ignored, as OpenAI-compatible servers do, so a client that sends
a newer OpenAI field still gets its audio.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.voice_expressions import MAX_EXPRESSION_CHARS

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
StreamFormat = Literal["audio", "sse"]

# What each format is sent as. opus travels in Ogg (RFC 7845 registers audio/ogg for it;
# audio/opus names the bare RTP payload). pcm is headerless 16-bit little-endian 24 kHz mono,
# which has no registered type (audio/L16 is big-endian); audio/pcm is what OpenAI-compatible
# servers, Kokoro-FastAPI among them, send.
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SSE_CONTENT_TYPE = "text/event-stream"


class VoiceRef(BaseModel):
    """OpenAI's object form of a voice, `{"id": "…"}`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)


class SpeechRequest(BaseModel):
    """`POST /v1/audio/speech`."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "kokoro",
                    "input": "Hello from kokoro-pay.",
                    "voice": "af_sky",
                    "response_format": "mp3",
                }
            ]
        },
    )

    input: str = Field(
        description=(
            "Text to speak. Required, not blank, at most 4096 characters by default "
            "(the server's GATEWAY_MAX_INPUT_CHARS). Billed at one credit per character, "
            "counted in Unicode code points."
        ),
        min_length=1,
    )
    model: str = Field(
        default="kokoro",
        description="A model id or alias from /v1/models: kokoro, tts-1, tts-1-hd, …",
        min_length=1,
        max_length=128,
    )
    voice: Annotated[str, Field(max_length=MAX_EXPRESSION_CHARS)] | VoiceRef | None = Field(
        default=None,
        description=(
            "A voice id or alias from /v1/audio/voices, or a blend such as "
            '`af_bella(2)+af_sky(1)`; OpenAI\'s `{"id": …}` form is accepted too. '
            "Defaults to the server's GATEWAY_DEFAULT_VOICE (af_heart)."
        ),
    )
    response_format: AudioFormat = Field(default="mp3", description="The audio format.")
    speed: float = Field(
        default=1.0, ge=0.25, le=4.0, allow_inf_nan=False, description="Playback speed."
    )
    instructions: str | None = Field(
        default=None,
        max_length=4096,
        description="Accepted for compatibility and ignored: Kokoro takes no style prompt.",
    )
    stream_format: StreamFormat = Field(
        default="audio",
        description=(
            "`audio`: the body is the raw audio stream. `sse`: text/event-stream of "
            "`speech.audio.delta` events (base64 audio) then one `speech.audio.done` with usage."
        ),
    )

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be empty")
        return value

    def voice_name(self) -> str | None:
        if isinstance(self.voice, VoiceRef):
            return self.voice.id
        return self.voice


class ErrorBody(BaseModel):
    """Every error answer."""

    detail: str = Field(examples=["Insufficient credits: this request costs 22 credits."])


class BalanceBody(BaseModel):
    """`GET /v1/balance`."""

    balance: int = Field(description="Credits that can still be spent (one per character).")
    unlimited: bool = Field(description="Whether the account is never refused.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the model was released.")
    owned_by: str
    # Not in OpenAI's shape; says which weights speak (e.g. int8-derived precision).
    description: str = ""


class ModelList(BaseModel):
    """`GET /v1/models`: OpenAI's list shape; every alias is listed as a model of its own."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class VoiceCard(BaseModel):
    id: str = Field(description="What to send as `voice`.")
    name: str = Field(description="The same id, for clients that show a name.")
    language: str = Field(description='Language tag, e.g. "en-us".')
    gender: str = Field(description='"female", "male", or empty for mixed blends.')
    kind: Literal["builtin", "alias", "blend"]
    target: str = Field(description="For aliases and blends, the expression it stands for.")


class VoiceList(BaseModel):
    """`GET /v1/audio/voices`."""

    voices: list[VoiceCard]


class SpeechAudioDelta(BaseModel):
    """An SSE event carrying the next piece of audio."""

    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="Base64 of the next bytes of the audio stream.")


class SpeechUsage(BaseModel):
    """OpenAI's usage fields, counted in characters: one token is one billed character."""

    input_tokens: int
    output_tokens: int = 0
    total_tokens: int
    characters: int = Field(description="Input characters (code points) billed.")


class SpeechAudioDone(BaseModel):
    """The last SSE event of a complete stream."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage
