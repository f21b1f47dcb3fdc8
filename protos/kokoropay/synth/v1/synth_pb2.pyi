from kokoropay.common.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_FORMAT_UNSPECIFIED: _ClassVar[AudioFormat]
    AUDIO_FORMAT_MP3: _ClassVar[AudioFormat]
    AUDIO_FORMAT_OPUS: _ClassVar[AudioFormat]
    AUDIO_FORMAT_AAC: _ClassVar[AudioFormat]
    AUDIO_FORMAT_FLAC: _ClassVar[AudioFormat]
    AUDIO_FORMAT_WAV: _ClassVar[AudioFormat]
    AUDIO_FORMAT_PCM: _ClassVar[AudioFormat]

class VoiceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOICE_KIND_UNSPECIFIED: _ClassVar[VoiceKind]
    VOICE_KIND_BUILTIN: _ClassVar[VoiceKind]
    VOICE_KIND_ALIAS: _ClassVar[VoiceKind]
    VOICE_KIND_BLEND: _ClassVar[VoiceKind]
AUDIO_FORMAT_UNSPECIFIED: AudioFormat
AUDIO_FORMAT_MP3: AudioFormat
AUDIO_FORMAT_OPUS: AudioFormat
AUDIO_FORMAT_AAC: AudioFormat
AUDIO_FORMAT_FLAC: AudioFormat
AUDIO_FORMAT_WAV: AudioFormat
AUDIO_FORMAT_PCM: AudioFormat
VOICE_KIND_UNSPECIFIED: VoiceKind
VOICE_KIND_BUILTIN: VoiceKind
VOICE_KIND_ALIAS: VoiceKind
VOICE_KIND_BLEND: VoiceKind

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "speed", "format", "model", "word_timestamps")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    speed: float
    format: AudioFormat
    model: str
    word_timestamps: bool
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., speed: _Optional[float] = ..., format: _Optional[_Union[AudioFormat, str]] = ..., model: _Optional[str] = ..., word_timestamps: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("audio", "sequence", "start_seconds", "duration_seconds", "characters_consumed", "summary", "words")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sequence: int
    start_seconds: float
    duration_seconds: float
    characters_consumed: int
    summary: SynthesisSummary
    words: _containers.RepeatedCompositeFieldContainer[WordTimestamp]
    def __init__(self, audio: _Optional[bytes] = ..., sequence: _Optional[int] = ..., start_seconds: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., characters_consumed: _Optional[int] = ..., summary: _Optional[_Union[SynthesisSummary, _Mapping]] = ..., words: _Optional[_Iterable[_Union[WordTimestamp, _Mapping]]] = ...) -> None: ...

class WordTimestamp(_message.Message):
    __slots__ = ("text", "start_seconds", "end_seconds", "text_start", "text_end")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_START_FIELD_NUMBER: _ClassVar[int]
    TEXT_END_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_seconds: float
    end_seconds: float
    text_start: int
    text_end: int
    def __init__(self, text: _Optional[str] = ..., start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., text_start: _Optional[int] = ..., text_end: _Optional[int] = ...) -> None: ...

class SynthesisSummary(_message.Message):
    __slots__ = ("characters", "audio_seconds", "voice", "model")
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    characters: int
    audio_seconds: float
    voice: str
    model: str
    def __init__(self, characters: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., voice: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Voice(_message.Message):
    __slots__ = ("id", "language", "gender", "kind", "target", "word_timestamps")
    ID_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    language: str
    gender: str
    kind: VoiceKind
    target: str
    word_timestamps: bool
    def __init__(self, id: _Optional[str] = ..., language: _Optional[str] = ..., gender: _Optional[str] = ..., kind: _Optional[_Union[VoiceKind, str]] = ..., target: _Optional[str] = ..., word_timestamps: _Optional[bool] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices",)
    VOICES_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "aliases", "description", "sample_rate")
    ID_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    description: str
    sample_rate: int
    def __init__(self, id: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...
