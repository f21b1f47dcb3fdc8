"""How synth answers what its handlers raise: the service's one error table.

Kept apart from servicer.py so `__main__` can hand it to the server before the model stack (torch,
PyAV) is imported: synth listens, and says it is not serving yet, from its first second.
"""

from __future__ import annotations

import grpc

from services.common.errors import ErrorTable, InvalidArgument, ServiceError
from services.synth.models import UnknownModelError
from services.synth.voices import Language, VoiceError


class InputTooLong(ServiceError):
    def __init__(self, characters: int, limit: int) -> None:
        super().__init__(
            f"text has {characters} characters; this server takes at most {limit} per request",
            reason="INPUT_TOO_LONG",
        )


class WordTimestampsUnsupported(ServiceError):
    """Word timestamps asked of a voice whose language's G2P does not say which phonemes each
    word became: there are no word durations, and times are not invented."""

    def __init__(self, voice: str, language: Language, timed: list[Language]) -> None:
        offered = ", ".join(f"{lang.name} ({lang.tag})" for lang in timed) or "none"
        super().__init__(
            f"word timestamps are not available for voice {voice!r}: {language.name} "
            f"({language.tag}) is phonemized without word boundaries, so there are no word "
            f"durations to report; languages with word timestamps: {offered}",
            reason="WORD_TIMESTAMPS_UNSUPPORTED",
        )


ERRORS = ErrorTable(
    "synth",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        UnknownModelError: grpc.StatusCode.INVALID_ARGUMENT,
        VoiceError: grpc.StatusCode.INVALID_ARGUMENT,
        InputTooLong: grpc.StatusCode.RESOURCE_EXHAUSTED,
        WordTimestampsUnsupported: grpc.StatusCode.INVALID_ARGUMENT,
    },
)
