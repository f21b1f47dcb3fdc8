"""GrpcPredictionsClient against an in-process PredictionService: the messages it builds and
reads, and failures surfacing as UpstreamError with their ErrorInfo reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from kokoropay.predictions.v1 import predictions_pb2, predictions_pb2_grpc

from services.common.status import rich_status
from services.gateway.clients import (
    GrpcPredictionsClient,
    OutputRequest,
    PredictionInput,
    PredictionStatus,
    Principal,
    UpstreamError,
)

CREATED = datetime(2026, 4, 6, 12, 0, tzinfo=UTC)


class Service(predictions_pb2_grpc.PredictionServiceServicer):
    def __init__(self) -> None:
        self.requests: list[object] = []

    async def CreatePrediction(
        self, request: predictions_pb2.CreatePredictionRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.Prediction:
        self.requests.append(request)
        if request.input.text == "poor":
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "insufficient credits",
                    reason="INSUFFICIENT_CREDITS",
                    domain="predictions.kokoropay",
                )
            )
        if request.input.text == "busy":
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many predictions queued or running",
                    reason="CONCURRENCY_LIMITED",
                    domain="predictions.kokoropay",
                    metadata={"limit": str(request.max_active), "retry_after_seconds": "2"},
                )
            )
        prediction = predictions_pb2.Prediction(
            id="pred_1",
            account_id=request.account_id,
            status=predictions_pb2.PREDICTION_STATUS_PROCESSING,
            input=request.input,
            webhook_url=request.webhook_url,
        )
        prediction.create_time.FromDatetime(CREATED)
        return prediction

    async def GetPrediction(
        self, request: predictions_pb2.GetPredictionRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.Prediction:
        self.requests.append(request)
        if request.prediction_id != "pred_1":
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.NOT_FOUND,
                    "no such prediction",
                    reason="PREDICTION_NOT_FOUND",
                    domain="predictions.kokoropay",
                )
            )
        prediction = predictions_pb2.Prediction(
            id="pred_1",
            status=predictions_pb2.PREDICTION_STATUS_ERROR,
            # Empty fields mean the service's defaults.
            input=predictions_pb2.PredictionInput(text="hi"),
            message="cancelled",
            details="by request",
        )
        prediction.create_time.FromDatetime(CREATED)
        prediction.finish_time.FromDatetime(CREATED.replace(second=3))
        return prediction

    async def ReadOutput(
        self, request: predictions_pb2.ReadOutputRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[predictions_pb2.OutputChunk]:
        self.requests.append(request)
        if request.signature != "good":
            await context.abort_with_status(
                rich_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "bad signature",
                    reason="SIGNATURE_INVALID",
                    domain="predictions.kokoropay",
                )
            )
        yield predictions_pb2.OutputChunk(total_size=10, content_type="audio/wav")
        yield predictions_pb2.OutputChunk(data=b"01234")
        yield predictions_pb2.OutputChunk(data=b"56789")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Service, GrpcPredictionsClient]]:
    service = Service()
    server = grpc.aio.server()
    predictions_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield service, GrpcPredictionsClient(channel, timeout=5, ready_timeout=1)
    finally:
        await channel.close()
        await server.stop(None)


async def test_create_sends_the_principal_and_the_input(
    served: tuple[Service, GrpcPredictionsClient],
) -> None:
    service, client = served
    spoken = PredictionInput("Hello.", "af_sky", 1.1, "wav")

    prediction = await client.create_prediction(
        Principal("acct_1", "key_1"), spoken, "https://hooks.example/x", max_active=7
    )

    (request,) = service.requests
    assert isinstance(request, predictions_pb2.CreatePredictionRequest)
    assert (request.account_id, request.key_id) == ("acct_1", "key_1")
    assert (request.input.text, request.input.voice, request.input.output_format) == (
        "Hello.",
        "af_sky",
        "wav",
    )
    assert request.webhook_url == "https://hooks.example/x"
    assert request.max_active == 7
    assert prediction.id == "pred_1" and prediction.status is PredictionStatus.PROCESSING
    # Read back from float32 without its noise.
    assert prediction.input == spoken
    assert prediction.created_at == CREATED and prediction.finished_at is None


async def test_a_refusal_carries_its_reason(
    served: tuple[Service, GrpcPredictionsClient],
) -> None:
    _, client = served
    with pytest.raises(UpstreamError) as refused:
        await client.create_prediction(
            Principal("acct_1", "key_1"), PredictionInput("poor", "af", 1, "mp3"), "", 10
        )
    assert (refused.value.service, refused.value.code, refused.value.reason) == (
        "predictions",
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    )
    with pytest.raises(UpstreamError) as limited:
        await client.create_prediction(
            Principal("acct_1", "key_1"), PredictionInput("busy", "af", 1, "mp3"), "", 3
        )
    assert (limited.value.code, limited.value.reason, limited.value.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CONCURRENCY_LIMITED",
        {"limit": "3", "retry_after_seconds": "2"},
    )
    with pytest.raises(UpstreamError) as missing:
        await client.get_prediction("acct_1", "pred_2")
    assert missing.value.reason == "PREDICTION_NOT_FOUND"


async def test_empty_fields_read_as_the_services_defaults(
    served: tuple[Service, GrpcPredictionsClient],
) -> None:
    _, client = served
    prediction = await client.get_prediction("acct_1", "pred_1")
    assert prediction.input == PredictionInput("hi", "af", 1.0, "mp3")
    assert (prediction.status, prediction.message, prediction.details) == (
        PredictionStatus.ERROR,
        "cancelled",
        "by request",
    )
    assert prediction.finished_at == CREATED.replace(second=3)


async def test_read_output_streams_the_header_then_the_bytes(
    served: tuple[Service, GrpcPredictionsClient],
) -> None:
    service, client = served
    stream = client.read_output(OutputRequest("pred_1", 123, "good", offset=2, length=5))
    pieces = []
    while (piece := await stream.next()) is not None:
        pieces.append(piece)
    assert [(p.total_size, p.content_type, p.data) for p in pieces] == [
        (10, "audio/wav", b""),
        (0, "", b"01234"),
        (0, "", b"56789"),
    ]
    request = service.requests[-1]
    assert isinstance(request, predictions_pb2.ReadOutputRequest)
    assert (request.prediction_id, request.expires, request.offset, request.length) == (
        "pred_1",
        123,
        2,
        5,
    )

    refused = client.read_output(OutputRequest("pred_1", 123, "forged"))
    with pytest.raises(UpstreamError) as error:
        await refused.next()
    assert (error.value.code, error.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "SIGNATURE_INVALID",
    )
