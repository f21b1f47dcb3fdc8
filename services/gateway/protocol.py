"""The REST contract's bodies as pydantic models: what clients send and what they get back.

Field names, defaults and ranges follow OpenAI's `POST /v1/audio/speech`, so its clients work
unchanged; the prediction API's follow the hosted Kokoro listing's (`/v1/prediction`), so its
clients work by changing the base URL and the key; captioned speech's follow Kokoro-FastAPI's
(`/dev/captioned_speech`). Unknown fields are ignored, as OpenAI-compatible servers do, so a
client that sends a newer field still gets its audio.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.config import JsonDict

from services.common.voice_expressions import MAX_EXPRESSION_CHARS

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
StreamFormat = Literal["audio", "sse"]
# How the audio is answered: a speech request's stream_format, or captioned speech's JSON
# (one object) or JSON lines (one object per piece of audio).
AnswerFormat = Literal["audio", "sse", "json", "jsonl"]

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
JSON_CONTENT_TYPE = "application/json"
JSON_LINES_CONTENT_TYPE = "application/x-ndjson"


class VoiceRef(BaseModel):
    """OpenAI's object form of a voice, `{"id": "…"}`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)


_SPEECH_EXAMPLE: JsonDict = {
    "model": "kokoro",
    "input": "Hello from kokoro-pay.",
    "voice": "af_sky",
    "response_format": "mp3",
}


class SpeechBody(BaseModel):
    """What every speech endpoint reads: the text, the voice and how to encode it."""

    model_config = ConfigDict(extra="ignore")

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

    @property
    def answer_format(self) -> AnswerFormat:
        """How the audio goes back to the client."""
        raise NotImplementedError

    @property
    def word_timestamps(self) -> bool:
        """Whether the answer says when each word is spoken."""
        raise NotImplementedError


class SpeechRequest(SpeechBody):
    """`POST /v1/audio/speech`."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [_SPEECH_EXAMPLE]})

    stream_format: StreamFormat = Field(
        default="audio",
        description=(
            "`audio`: the body is the raw audio stream. `sse`: text/event-stream of "
            "`speech.audio.delta` events (base64 audio) then one `speech.audio.done` with usage."
        ),
    )
    timestamps: Literal["word"] | None = Field(
        default=None,
        description=(
            "`word`, with `stream_format: sse`: before each piece's `speech.audio.delta` events, "
            'a `speech.audio.words` event, `{"type": "speech.audio.words", "words": [{"word", '
            '"start_time", "end_time"}]}`, saying when the words it speaks start and end (seconds '
            "from the start of the audio). Only for voices whose `word_timestamps` is true in "
            "/v1/audio/voices (English); for others, 400."
        ),
    )

    @field_validator("timestamps")
    @classmethod
    def _needs_events(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("stream_format") != "sse":
            raise ValueError(
                "word timestamps need `stream_format: sse` (a raw audio stream has no room for "
                "them); or use /v1/captioned_speech"
            )
        return value

    @property
    def answer_format(self) -> AnswerFormat:
        return self.stream_format

    @property
    def word_timestamps(self) -> bool:
        return self.timestamps == "word"


_CAPTIONED_DESCRIPTION = (
    "`false`: one JSON object, `audio` (base64 of the whole file), `audio_format` and "
    "`timestamps`, once synthesis is over. `true`: JSON lines (application/x-ndjson), one such "
    "object per piece of audio as it is spoken, its `timestamps` the words in that piece."
)


class CaptionedSpeechRequest(SpeechBody):
    """`POST /v1/captioned_speech`: speech's body, answered as JSON with word timestamps."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [_SPEECH_EXAMPLE]})

    stream: bool = Field(default=False, description=_CAPTIONED_DESCRIPTION + " Default false.")

    @property
    def answer_format(self) -> AnswerFormat:
        return "jsonl" if self.stream else "json"

    @property
    def word_timestamps(self) -> bool:
        return True


class DevCaptionedSpeechRequest(CaptionedSpeechRequest):
    """`POST /dev/captioned_speech`: Kokoro-FastAPI's path, where `stream` defaults to true."""

    stream: bool = Field(default=True, description=_CAPTIONED_DESCRIPTION + " Default true.")


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
    word_timestamps: bool = Field(
        description="Whether its words can be timed (`timestamps: word`, /v1/captioned_speech): "
        "its language's phonemizer says which sounds each word became (English's does)."
    )


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


class WordTimestamp(BaseModel):
    """When one word of the input is spoken (Kokoro-FastAPI's shape)."""

    word: str = Field(
        description="The word exactly as the input wrote it, its punctuation included "
        '("$5.20,", "Dr.", "2026"); punctuation standing alone joins the word before it.'
    )
    start_time: float = Field(description="Seconds from the start of the audio, to the ms.")
    end_time: float = Field(description="Seconds from the start of the audio, to the ms.")


class SpeechAudioWords(BaseModel):
    """With `timestamps: word`: the words the next piece of audio speaks."""

    type: Literal["speech.audio.words"] = "speech.audio.words"
    words: list[WordTimestamp]


class CaptionedSpeech(BaseModel):
    """Captioned speech's answer: the audio and when each word is spoken; with `stream: true`,
    one per piece of audio."""

    audio: str = Field(description="Base64 of the audio (with `stream`, of this piece).")
    audio_format: str = Field(
        description="The audio's media type, as /v1/audio/speech sends it (`audio/mpeg` for "
        "mp3, …), as Kokoro-FastAPI's field carries it."
    )
    timestamps: list[WordTimestamp] = Field(
        description="The words spoken (with `stream`, in this piece), in input order."
    )


class SpeechAudioDone(BaseModel):
    """The last SSE event of a complete stream."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


# --- the hosted listing's prediction API ---------------------------------------------------------

# The listing's model slug: the one model /v1/prediction serves.
PREDICTION_MODEL = "kokoro-82m"
# The listing's default voice (synth's `af`, a blend of af_bella and af_sarah).
PREDICTION_DEFAULT_VOICE = "af"
MAX_WEBHOOK_URL_CHARS = 2048
# Every media type an output may be served as: the six formats, and a fallback for an output
# the service stored without one.
OUTPUT_CONTENT_TYPES = (*CONTENT_TYPES.values(), "application/octet-stream")


class PredictionRequestInput(BaseModel):
    """What to speak: the listing's input schema, plus an output format."""

    model_config = ConfigDict(extra="ignore")

    text: str = Field(
        min_length=1,
        description=(
            "Text to speak. Required, not blank, at most 4096 characters by default (the "
            "server's GATEWAY_MAX_INPUT_CHARS). Billed at one credit per character (code point)."
        ),
    )
    voice: str = Field(
        default=PREDICTION_DEFAULT_VOICE,
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description=(
            "A voice id, alias or blend from /v1/audio/voices (the listing's af, af_bella, "
            "af_sarah, am_adam, am_michael, bf_emma, bf_isabella, bm_george, bm_lewis, "
            "af_nicole, af_sky among them)."
        ),
    )
    speed: float = Field(
        default=1.0,
        ge=0.5,
        le=5.0,
        allow_inf_nan=False,
        description="Speech speed multiplier (0.5 = half speed, 2.0 = double speed).",
    )
    output_format: AudioFormat = Field(default="mp3", description="The output's audio format.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be empty")
        return value


class PredictionRequest(BaseModel):
    """`POST /v1/prediction/`."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": PREDICTION_MODEL,
                    "input": {"text": "Hi, welcome to kokoro-pay!", "voice": "af_sky"},
                    "webhook_url": "https://your.host/path",
                }
            ]
        },
    )

    model: str = Field(
        default=PREDICTION_MODEL,
        max_length=128,
        description=f"The model slug: `{PREDICTION_MODEL}`; any other is a 404.",
    )
    input: PredictionRequestInput
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_WEBHOOK_URL_CHARS,
        description=(
            "Where the result is POSTed when the prediction ends: an absolute http(s) URL. The "
            "request is signed per Standard Webhooks with your account's webhook secret."
        ),
    )

    @field_validator("webhook_url")
    @classmethod
    def _a_web_address(cls, value: str | None) -> str | None:
        if not value:
            return None  # "" reads as no webhook, as clients that always send the field mean
        try:
            parts = urlsplit(value)
            sound = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # an unclosed IPv6 bracket
            sound = False
        if not sound or not value.isprintable():
            raise ValueError("must be an absolute http(s) URL")
        if " " in value:
            raise ValueError("must be an absolute http(s) URL without spaces")
        return value


class PredictionCreated(BaseModel):
    """The listing's answer to a create."""

    # Always sent: required in the documented answer, defaults or not.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: Literal["success"] = "success"
    message: Literal["Prediction created successfully"] = "Prediction created successfully"
    predictionID: str = Field(description="Poll `GET /v1/prediction/{predictionID}`.")


class PredictionMetrics(BaseModel):
    predict_time: float = Field(description="Seconds the synthesis took; 0 until it succeeds.")


class PredictionInputEcho(BaseModel):
    """The input as the prediction was made, defaults filled in."""

    text: str
    voice: str
    speed: float
    output_format: str = Field(description="mp3, opus, aac, flac, wav or pcm.")


class PredictionUrls(BaseModel):
    cancel: str = Field(description="`POST` here to cancel the prediction.")


class PredictionState(BaseModel):
    """`GET /v1/prediction/{id}`: the listing's fields, then extras."""

    status: Literal["processing", "success", "error"] = Field(
        description="`processing`: poll again; `success`: read `output`; `error`: read "
        "`message` and `details`."
    )
    predictionID: str
    output: str = Field(
        description="For `success`, the audio's URL: signed, expiring with the output's "
        "retention, fetched without the API key. Empty otherwise."
    )
    metrics: PredictionMetrics
    # Present only for `error`.
    message: str = Field(
        default="", description="For `error` only: what happened (e.g. cancelled)."
    )
    details: str = Field(default="", description="For `error` only: more detail.")
    input: PredictionInputEcho
    created_at: datetime | None = Field(description="When it was created (UTC).")
    finished_at: datetime | None = Field(description="When it ended (UTC); null while processing.")
    urls: PredictionUrls


class PredictionErrorBody(BaseModel):
    """Every error answer of the prediction API, as the listing shapes it."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: Literal["error"] = "error"
    message: str = Field(
        examples=["Insufficient credits — top up your balance at https://…/billing. …"],
        description="What went wrong, for a person.",
    )
    details: str = Field(
        examples=["insufficient_credits"],
        description="A stable code naming the failure: invalid_input, missing_api_key, "
        "key_invalid, key_revoked, conflicting_credentials, insufficient_credits, "
        "model_not_found, prediction_not_found, output_not_found, signature_invalid, "
        "output_expired, range_not_satisfiable, unavailable, …",
    )
