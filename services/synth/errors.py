"""How synth answers what its handlers raise: the service's one error table.

Kept apart from servicer.py so `__main__` can hand it to the server before the model stack (torch,
PyAV) is imported: synth listens, and says it is not serving yet, from its first second.
"""

from __future__ import annotations

import grpc

from services.common.errors import ErrorTable, InvalidArgument, ServiceError
from services.synth.models import UnknownModelError
from services.synth.voices import VoiceError


class InputTooLong(ServiceError):
    def __init__(self, characters: int, limit: int) -> None:
        super().__init__(
            f"text has {characters} characters; this server takes at most {limit} per request",
            reason="INPUT_TOO_LONG",
        )


ERRORS = ErrorTable(
    "synth",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        UnknownModelError: grpc.StatusCode.INVALID_ARGUMENT,
        VoiceError: grpc.StatusCode.INVALID_ARGUMENT,
        InputTooLong: grpc.StatusCode.RESOURCE_EXHAUSTED,
    },
)
