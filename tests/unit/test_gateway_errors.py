"""The status table, the retry hints, the settings and the voice grammar, on their own."""

from __future__ import annotations

import grpc
import pytest

from services.common.settings import load_settings
from services.gateway.catalog import Catalog
from services.gateway.clients import UpstreamError, _call
from services.gateway.errors import (
    GRPC_TO_HTTP,
    http_status,
    insufficient_credits,
    reserve_error,
    should_retry,
    synthesis_error,
)
from services.gateway.fingerprint import fingerprint
from services.gateway.settings import GatewaySettings
from tests.support.gateway_fakes import FakeSynth


def test_every_grpc_status_but_ok_has_an_http_status() -> None:
    assert set(GRPC_TO_HTTP) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED", 401),
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS", 402),
        (grpc.StatusCode.FAILED_PRECONDITION, None, 400),
        (grpc.StatusCode.INVALID_ARGUMENT, None, 400),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, 400),
        (grpc.StatusCode.UNAVAILABLE, None, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, 504),
        (grpc.StatusCode.INTERNAL, None, 502),
    ],
)
def test_status_table(code: grpc.StatusCode, reason: str | None, status: int) -> None:
    assert http_status(UpstreamError("ledger", code, "m", reason)) == status


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS", 402),
        (grpc.StatusCode.NOT_FOUND, None, 402),  # a key issued before its account was opened
        (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", 409),
        (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_KEY_REUSED", 400),
        (grpc.StatusCode.FAILED_PRECONDITION, "ATTEMPT_IN_PROGRESS", 409),
        (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_COMPLETED", 409),
        (grpc.StatusCode.UNAVAILABLE, None, 503),
    ],
)
def test_a_refused_reserve(code: grpc.StatusCode, reason: str | None, status: int) -> None:
    refusal = UpstreamError("ledger", code, "m", reason)
    answer = reserve_error(refusal, 7, "input=a", "http://127.0.0.1:8080/billing")
    assert answer.status == status
    if status == 402:
        # The contract's sentence, where to top up, what the request costs.
        assert answer.detail == (
            "Insufficient credits — top up your balance at http://127.0.0.1:8080/billing. "
            "This request costs 7 credits (one per character of input)."
        )


def test_the_402_names_the_billing_page_it_is_given() -> None:
    refusal = UpstreamError(
        "ledger", grpc.StatusCode.FAILED_PRECONDITION, "m", "INSUFFICIENT_CREDITS"
    )

    answer = reserve_error(refusal, 3, "input=abc", "https://dashboard.kokoropay.example/billing")

    assert answer.detail.startswith(
        "Insufficient credits — top up your balance at "
        "https://dashboard.kokoropay.example/billing. "
    )


def test_without_a_billing_url_the_402_is_the_contracts_sentence() -> None:
    refusal = UpstreamError("ledger", grpc.StatusCode.NOT_FOUND, "m")

    for answer in (insufficient_credits(7, billing_url=""), reserve_error(refusal, 7, "input=a")):
        assert answer.status == 402
        assert answer.detail == (
            "Insufficient credits — top up your balance. "
            "This request costs 7 credits (one per character of input)."
        )


def test_the_billing_url_defaults_to_the_local_dashboard_and_may_be_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEWAY_BILLING_URL", raising=False)
    assert load_settings(GatewaySettings).billing_url == "http://127.0.0.1:8080/billing"

    monkeypatch.setenv("GATEWAY_BILLING_URL", "")
    assert load_settings(GatewaySettings).billing_url == ""


@pytest.mark.parametrize(
    "value", ["dashboard.example/billing", "ftp://dashboard.example/", "https://a b/", "https://"]
)
def test_a_billing_url_a_browser_cannot_open_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GATEWAY_BILLING_URL", value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    message = str(stopped.value)
    assert "GATEWAY_BILLING_URL" in message and "\n" not in message


def test_a_key_reused_for_another_request_names_the_fields_that_differ() -> None:
    stored = fingerprint([("input", "hello"), ("voice", "af_sky(1.0)"), ("speed", "1.0")])
    current = fingerprint([("input", "hello"), ("voice", "am_adam(1.0)"), ("speed", "2.0")])
    refusal = UpstreamError(
        "ledger", grpc.StatusCode.ALREADY_EXISTS, "m", "REQUEST_KEY_REUSED", {"fingerprint": stored}
    )

    answer = reserve_error(refusal, 5, current)

    assert answer.status == 400
    assert "differs in: voice, speed" in answer.detail


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAVAILABLE, 502),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 502),
        (grpc.StatusCode.INTERNAL, 502),
    ],
)
def test_a_synth_failure_is_the_callers_or_a_502(code: grpc.StatusCode, status: int) -> None:
    assert synthesis_error(UpstreamError("synth", code, "m")).status == status


def test_synth_not_serving_yet_is_a_503_with_retry_after_not_a_502() -> None:
    warming_up = UpstreamError("synth", grpc.StatusCode.UNAVAILABLE, "starting", "NOT_SERVING")

    answer = synthesis_error(warming_up)

    assert answer.status == 503
    assert answer.headers == {"Retry-After": "5"}
    assert "not serving yet" in answer.detail and "nothing was charged" in answer.detail


@pytest.mark.parametrize(
    ("status", "retry"),
    [(400, False), (401, False), (402, False), (404, False), (408, True), (429, True)]
    + [(500, None), (502, True), (503, True), (504, True), (200, None)],
)
def test_retry_hints(status: int, retry: bool | None) -> None:
    assert should_retry(status) is retry


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_PORT", "GATEWAY_HOST", "GATEWAY_MAX_INPUT_CHARS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(GatewaySettings)
    assert settings.bind_address == "127.0.0.1:8000"
    assert (settings.auth_address, settings.ledger_address, settings.synth_address) == (
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50053",
    )
    assert settings.max_input_chars == 4096
    # The first-chunk wait, one extension (checkpoints renew it from there), then settling.
    assert settings.hold_ttl_seconds == 300 + 60 + 60
    assert (settings.checkpoint_interval_seconds, settings.hold_extension_seconds) == (5, 60)
    # 4096 characters at speed 0.25 are about 18 minutes of audio; an hour covers a slow CPU.
    assert settings.max_stream_seconds == 3600
    assert settings.send_timeout_seconds == 30
    # Settlement retries span about 8 s, well inside the hold's settling margin.
    assert settings.settle_retry_delays_seconds == (0.25, 0.5, 1.0, 2.0, 4.0)


def test_a_bad_setting_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MAX_INPUT_CHARS", "lots")
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    message = str(stopped.value)
    assert "GATEWAY_MAX_INPUT_CHARS" in message and "\n" not in message


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        (
            {"GATEWAY_CHECKPOINT_INTERVAL_SECONDS": "30", "GATEWAY_HOLD_EXTENSION_SECONDS": "60"},
            ("GATEWAY_HOLD_EXTENSION_SECONDS", "GATEWAY_CHECKPOINT_INTERVAL_SECONDS"),
        ),
        (
            {"GATEWAY_MAX_STREAM_SECONDS": "120"},
            ("GATEWAY_MAX_STREAM_SECONDS", "GATEWAY_FIRST_CHUNK_TIMEOUT_SECONDS"),
        ),
    ],
    ids=["extension-too-short-for-a-retry", "limit-inside-the-first-audio-wait"],
)
def test_timings_that_cannot_work_together_stop_with_one_line(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: tuple[str, ...]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    message = str(stopped.value)
    assert all(name in message for name in named) and "\n" not in message


@pytest.mark.parametrize(
    ("voice", "problem"),
    [
        ("af_sky", None),
        ("alloy", None),
        (" af_sky ", None),
        ("af_bella(2)+af_sky(1)", None),
        ("af_bella + af_sky", None),
        ("af+am_michael(0.5)", None),
        ("+".join(["af_sky"] * 8), None),
        ("+".join(["af_sky"] * 9), "at most 8"),
        ("af_sky(0)", "positive"),
        ("af_sky(-1)", "cannot read"),
        ("af_sky(", "cannot read"),
        ("af_nobody", "unknown voice 'af_nobody'"),
        ("", "voice is required"),
    ],
)
async def test_voice_expressions(voice: str, problem: str | None) -> None:
    found = await Catalog(FakeSynth(), ttl=60).voice_problem(voice)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


async def test_a_call_on_a_closed_channel_is_an_upstream_error() -> None:
    async def closed() -> None:
        raise grpc.aio.UsageError("Channel is closed.")

    with pytest.raises(UpstreamError) as caught:
        await _call("ledger", closed())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.service == "ledger"
