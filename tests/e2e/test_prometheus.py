"""The operator's questions, asked of a real Prometheus scraping the mesh as real processes.

Debian's `prometheus` (the package `make promtool` installs) runs on a loopback port with a
scrape config generated from the mesh's metrics ports and the alert rules of
deploy/k8s/components/monitoring loaded. The mesh is this module's own, so every count is this
test's requests and nothing else: one sale, one 402 and one 502 refunded after synth is killed.
Prometheus must then hold the characters charged and refunded, the 402 and the first-audio
histogram with exactly those values, agree with the ledger, evaluate every rule without error,
and have every series a rule or a board panel reads.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from services.cli.processes import free_port
from tests.e2e.conftest import WEIGHTS_MANIFEST, decode
from tests.support.monitoring import metric_names_used, prometheus_binary, write_rules_file
from tests.support.postgres import create_database

pytestmark = [pytest.mark.model, pytest.mark.slow]

SCRAPE_SECONDS = 0.5  # Prometheus takes durations in whole units: written as 500ms
# Series that exist only on a GPU: synth reports device memory on CUDA alone.
CUDA_ONLY = {"kokoropay_synth_device_memory_bytes"}
SOLD = "The lighthouse keeper climbed the stairs."
REFUNDED = "Nobody is there to say this."


class Prometheus:
    """A Prometheus server scraping `targets` (job → host:port) every SCRAPE_SECONDS."""

    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        rules = write_rules_file(folder)
        config = {
            "global": {
                "scrape_interval": f"{int(SCRAPE_SECONDS * 1000)}ms",
                "evaluation_interval": f"{int(SCRAPE_SECONDS * 1000)}ms",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        config_path = folder / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = (folder / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self._process.poll() is None, "prometheus exited: see prometheus.log"
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def observed_mesh(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, log_dir: Path
) -> Iterator[LocalMesh]:
    if not WEIGHTS_MANIFEST.exists():
        pytest.skip("the Kokoro weights are not under .data/weights (run `make weights`)")
    mesh = LocalMesh(
        data_dir=tmp_path_factory.mktemp("observed-mesh"),
        database_url=create_database(postgres_url, prefix="prom"),
        log_dir=log_dir,
    )
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def prometheus(
    observed_mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    # host:port of each process's /metrics URL.
    targets = {name: urlsplit(url).netloc for name, url in observed_mesh.metrics_addresses.items()}
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def query(prometheus: Prometheus) -> AsyncIterator[PromQuery]:
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=30) as client:
        yield PromQuery(client)


class PromQuery:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, **params: str) -> Any:
        answer = await self.client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    async def value(self, expression: str) -> float:
        """An expression's one value now (0 when it selects nothing)."""
        data = await self.get("/api/v1/query", query=expression)
        result = data["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else 0.0

    async def settles_at(self, expression: str, expected: float, timeout: float = 20) -> None:
        """Waits until `expression` reads `expected` (scrapes land every SCRAPE_SECONDS)."""
        deadline = time.monotonic() + timeout
        while (current := await self.value(expression)) != expected:
            assert time.monotonic() < deadline, f"{expression} = {current}, expected {expected}"
            await asyncio.sleep(SCRAPE_SECONDS)


async def wait_for_targets(query: PromQuery, count: int) -> None:
    deadline = time.monotonic() + 60
    while await query.value("count(up == 1)") < count:
        assert time.monotonic() < deadline, await query.get("/api/v1/targets")
        await asyncio.sleep(SCRAPE_SECONDS)


async def test_prometheus_answers_what_was_sold_refunded_and_how_fast(
    observed_mesh: LocalMesh, query: PromQuery
) -> None:
    await wait_for_targets(query, len(observed_mesh.metrics_addresses))
    async with AdminClient(
        observed_mesh.grpc_address("auth"),
        observed_mesh.grpc_address("ledger"),
        observed_mesh.operator_tls,
    ) as admin:
        rich, _ = await admin.create_account("prom-rich", 1_000)
        rich_key = (await admin.create_key(rich.id, name="prom")).plaintext
        broke, _ = await admin.create_account("prom-broke", 0)
        broke_key = (await admin.create_key(broke.id, name="prom")).plaintext

        base = f"{observed_mesh.addresses['gateway']}/v1"
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            started = time.monotonic()
            async with http.stream(
                "POST",
                "/audio/speech",
                headers={"Authorization": f"Bearer {rich_key}"},
                json={"input": SOLD, "voice": "af_sky"},
            ) as sold:
                assert sold.status_code == 200
                pieces = sold.aiter_raw()
                first = await pieces.__anext__()
                first_audio = time.monotonic() - started
                audio = b"".join([first, *[piece async for piece in pieces]])
            assert decode(audio).seconds > 1

            unpaid = await http.post(
                "/audio/speech",
                headers={"Authorization": f"Bearer {broke_key}"},
                json={"input": "No credits for this.", "voice": "af_sky"},
            )
            assert unpaid.status_code == 402

            # Every series a rule or a panel reads is scraped before synth goes (its own go
            # stale once its process is gone).
            await query.settles_at("sum(kokoropay_gateway_characters_charged_total)", len(SOLD))
            names = set(await query.get("/api/v1/label/__name__/values"))
            assert metric_names_used() - CUDA_ONLY <= names, sorted(
                metric_names_used() - CUDA_ONLY - names
            )

            await asyncio.to_thread(observed_mesh.process("synth").kill)
            refunded = await http.post(
                "/audio/speech",
                headers={"Authorization": f"Bearer {rich_key}"},
                json={"input": REFUNDED, "voice": "af_sky"},
            )
            assert refunded.status_code == 502

        await query.settles_at(
            'sum(kokoropay_gateway_characters_refunded_total{outcome="failed"})', len(REFUNDED)
        )
        await query.settles_at("sum(kokoropay_gateway_characters_charged_total)", len(SOLD))
        await query.settles_at("sum(kokoropay_gateway_payment_required_total)", 1)
        await query.settles_at("sum(kokoropay_gateway_first_audio_seconds_count)", 1)
        first_audio_recorded = await query.value("sum(kokoropay_gateway_first_audio_seconds_sum)")
        assert 0 < first_audio_recorded <= first_audio
        # The answers match the ledger: what it captured is what the gateway says it sold.
        await query.settles_at("sum(kokoropay_ledger_credits_captured_total)", len(SOLD))
        balance = await admin.balance(rich.id)
        assert balance.balance == 1_000 - len(SOLD)

    # Every alert and recording rule evaluates against the real series without error.
    data = await query.get("/api/v1/rules")
    assert isinstance(data, dict)
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
