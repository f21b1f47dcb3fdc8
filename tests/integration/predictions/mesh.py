"""The predictions mesh as these tests meet it: the service and its workers as real processes,
a client that calls as the gateway, a webhook receiver, and a look at the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import grpc
import psycopg
from kokoropay.predictions.v1 import predictions_pb2 as P
from kokoropay.predictions.v1 import predictions_pb2_grpc

from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from services.common.settings import REPO_ROOT
from services.predictions.signing import UrlSigner
from tests.support.ledger import Ledger

T = TypeVar("T")

URL_SIGNING_SECRET = "predictions-tests-url-signing-secret"
# The key the tests create with, and its limit on predictions queued or running: the most there
# is, so that only the tests of that limit meet it.
KEY_ID = "key_test"
MAX_ACTIVE = 10_000
PUBLIC_BASE_URL = "https://api.kokoropay.test"
# Short, so the retention test sees audio expire; every other test reads its audio at once.
RETENTION_SECONDS = 8
SIGNER = UrlSigner(URL_SIGNING_SECRET, PUBLIC_BASE_URL)

# Every wait of the workers made short: dead workers noticed in about 2 s, retries and polls
# within a fraction of a second.
FAST_WORKERS = {
    "PREDICTIONS_WORKER_HEARTBEAT_SECONDS": "0.5",
    "PREDICTIONS_STALLED_WORKER_SECONDS": "2",
    "PREDICTIONS_MAINTENANCE_INTERVAL_SECONDS": "0.5",
    "PREDICTIONS_SETTLE_GRACE_SECONDS": "1",
    "PREDICTIONS_FETCH_POLL_SECONDS": "0.2",
    "PREDICTIONS_ABORT_POLL_SECONDS": "0.5",
    "PREDICTIONS_CHECKPOINT_INTERVAL_SECONDS": "1",
    "PREDICTIONS_HOLD_EXTEND_SECONDS": "60",
    "PREDICTIONS_RETRY_BASE_SECONDS": "0.2",
    "PREDICTIONS_RETRY_MAX_DELAY_SECONDS": "1",
    "PREDICTIONS_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "PREDICTIONS_WEBHOOK_RETRY_MAX_DELAY_SECONDS": "1",
    "PREDICTIONS_WORKER_GRACE_SECONDS": "2",
    "PREDICTIONS_OUTPUT_RETENTION_SECONDS": str(RETENTION_SECONDS),
}


@dataclass(frozen=True)
class Databases:
    """The owner's URL (migrations, and these tests' look inside) and the serving role's."""

    owner: str
    serving: str


class WorkerProcess(ServiceProcess):
    """`python -m services.predictions.worker`, ready when its health port says SERVING."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__("predictions", env, log_dir)
        self._env["PREDICTIONS_WORKER_HEALTH_PORT"] = str(self.health_port)
        self._env["PREDICTIONS_WORKER_METRICS_PORT"] = str(self.metrics_port)
        self.log_path = log_dir / f"predictions-worker-{self.health_port}.log"

    def start(self, wait_serving: bool = True, timeout: float = 60.0) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.predictions.worker"],
                cwd=REPO_ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_serving:
            self.wait_for("SERVING", timeout)
        return self


def as_role(url: str, role: str) -> str:
    """`url` for `role` (the embedded server trusts its socket: no password)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def reason(error: grpc.RpcError) -> str | None:
    info = error_info(error)
    return info.reason if info is not None else None


def field_of(error: grpc.RpcError) -> str | None:
    info = error_info(error)
    return info.metadata.get("field") if info is not None else None


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout:.0f}s")
        await asyncio.sleep(interval)


class Predictions:
    """The service as the gateway calls it, and the ledger beside it."""

    def __init__(self, channel: grpc.aio.Channel, operator: grpc.aio.Channel, ledger: Ledger):
        self.stub = predictions_pb2_grpc.PredictionServiceStub(channel)
        # The gateway's channel, for a gateway of the tests' own (test_idempotency.py).
        self.channel = channel
        # Webhook secrets are the dashboard's and the operator's.
        self.operator_stub = predictions_pb2_grpc.PredictionServiceStub(operator)
        self.ledger = ledger

    async def account(self, credits: int = 10_000) -> str:
        return await self.ledger.open_account(credits)

    async def create(
        self,
        account_id: str,
        text: str,
        *,
        voice: str = "",
        output_format: str = "",
        speed: float = 0.0,
        webhook_url: str = "",
        key_id: str = KEY_ID,
        max_active: int = MAX_ACTIVE,
        idempotency_key: str = "",
        request_fingerprint: str = "",
    ) -> P.Prediction:
        return await self.stub.CreatePrediction(
            P.CreatePredictionRequest(
                account_id=account_id,
                key_id=key_id,
                input=P.PredictionInput(
                    text=text, voice=voice, speed=speed, output_format=output_format
                ),
                webhook_url=webhook_url,
                max_active=max_active,
                idempotency_key=idempotency_key,
                request_fingerprint=request_fingerprint,
            )
        )

    async def get(self, account_id: str, prediction_id: str) -> P.Prediction:
        return await self.stub.GetPrediction(
            P.GetPredictionRequest(account_id=account_id, prediction_id=prediction_id)
        )

    async def cancel(self, account_id: str, prediction_id: str) -> P.Prediction:
        return await self.stub.CancelPrediction(
            P.CancelPredictionRequest(account_id=account_id, prediction_id=prediction_id)
        )

    async def finished(
        self, account_id: str, prediction_id: str, timeout: float = 60.0
    ) -> P.Prediction:
        async def done() -> P.Prediction | None:
            prediction = await self.get(account_id, prediction_id)
            processing = prediction.status == P.PREDICTION_STATUS_PROCESSING
            return None if processing else prediction

        return await eventually(done, timeout, interval=0.2)

    async def read(self, url: str, offset: int = 0, length: int = 0) -> tuple[P.OutputChunk, bytes]:
        """ReadOutput for an output URL's parts: the first message and the bytes after it."""
        request = read_request(url, offset, length)
        messages = [message async for message in self.stub.ReadOutput(request)]
        return messages[0], b"".join(message.data for message in messages[1:])


def read_request(url: str, offset: int = 0, length: int = 0) -> P.ReadOutputRequest:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prediction_id = parts.path.split("/")[-2]
    return P.ReadOutputRequest(
        prediction_id=prediction_id,
        expires=int(query["expires"][0]),
        signature=query["signature"][0],
        offset=offset,
        length=length,
    )


def query_one(url: str, statement: str, *params: Any) -> tuple[Any, ...] | None:
    """One row of `statement`, run as the owner: what the database holds."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement.encode(), params).fetchone()


def job_status(owner_url: str, prediction_id: str) -> str | None:
    """The status of the prediction's queue job (None once a successful job is deleted)."""
    row = query_one(
        owner_url,
        "SELECT j.status::text FROM predictions.procrastinate_jobs j "
        "JOIN predictions.predictions p ON p.job_id = j.id WHERE p.id = %s",
        prediction_id,
    )
    return row[0] if row else None


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next of `statuses` (then
    200) and keeps what it got."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/{uuid.uuid4().hex[:8]}"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def wait(self, count: int, timeout: float = 30.0) -> list[Received]:
        async def enough() -> list[Received] | None:
            return self.received if len(self.received) >= count else None

        return await eventually(enough, timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        finally:
            writer.close()
