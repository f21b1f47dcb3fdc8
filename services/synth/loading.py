"""The servicer synth registers before its model is loaded, so it can listen at once.

Importing torch and the model stack takes seconds, loading and warming up the model many more.
The server listens from the first second and answers every RPC with NOT_SERVING (the shared
readiness gate) until start-up has built the real `SynthServicer`; then this one hands every
call to it. A caller can therefore tell "synth is starting" (503, retry) from "synth is gone".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

if TYPE_CHECKING:
    from services.synth.servicer import SynthServicer


class LoadingSynthServicer(synth_pb2_grpc.SynthServiceServicer):
    def __init__(self) -> None:
        self.loaded: SynthServicer | None = None

    def _servicer(self) -> SynthServicer:
        # The readiness gate refuses every call until start-up has set `loaded`.
        assert self.loaded is not None, "called before start-up finished"
        return self.loaded

    async def Synthesize(
        self, request: synth_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[synth_pb2.AudioChunk]:
        async for chunk in self._servicer().Synthesize(request, context):
            yield chunk

    async def ListVoices(
        self, request: synth_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> synth_pb2.ListVoicesResponse:
        return await self._servicer().ListVoices(request, context)

    async def ListModels(
        self, request: synth_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> synth_pb2.ListModelsResponse:
        return await self._servicer().ListModels(request, context)
