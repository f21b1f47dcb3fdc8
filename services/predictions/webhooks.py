"""Webhooks: the listing's payload, signed per Standard Webhooks, sent only where it is safe.

When a prediction ends, its webhook job POSTs

    {"exec_id": <prediction id>, "status": "succeeded" | "failed", "output": <URL or "">,
     "error": <what went wrong or "">}

with the Standard Webhooks headers: `webhook-id` ("msg_<prediction id>", the same on every
try, so receivers can drop repeats), `webhook-timestamp` (this try's, unix seconds) and
`webhook-signature` ("v1,<base64 HMAC-SHA256>" over "<id>.<timestamp>.<body>", under the
account's secret, made by the `standardwebhooks` library). A 2xx within the timeout is
delivered; anything else is retried by the queue (jobs.py) with `retry_delay`'s backoff until
PREDICTIONS_WEBHOOK_RETRY_HOURS after the prediction ended.

Where it goes (server-side request forgery): a webhook URL is someone else's input that makes
us send requests. Its host is resolved once; every address it resolves to must be public
(not loopback, private, link-local, shared, reserved, multicast or unspecified, IPv4-mapped
addresses judged as IPv4) unless PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS is set; and the request
goes to the address that was checked (the URL's host becomes the Host header and, for https,
the TLS server name, so the certificate is still checked against it). A DNS answer that changes
between check and connect changes nothing. Redirects are not followed, and proxies from the
environment are not used. The same check runs at CreatePrediction (refused:
INVALID_ARGUMENT, reason WEBHOOK_URL_REFUSED) and before every delivery.

Each try is counted once (metrics.py): `delivered` and `refused` here, a try that did not
deliver by the queue's retry strategy (jobs.py), as `failed` or, the last, `gave_up`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from services.common.errors import InvalidArgument
from services.predictions import metrics
from services.predictions.signing import UrlSigner, output_url
from services.predictions.store import Prediction, PredictionStore

# A name that takes longer than this to resolve is refused rather than waited on.
RESOLVE_TIMEOUT_SECONDS = 5.0
USER_AGENT = "kokoro-pay-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_log = logging.getLogger("predictions.webhooks")


class WebhookUrlRefused(InvalidArgument):
    """A webhook URL that is not http(s), does not resolve, or resolves to a refused address."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"webhook_url {problem}",
            reason="WEBHOOK_URL_REFUSED",
            metadata={"field": "webhook_url"},
        )


@dataclass(frozen=True)
class Target:
    """Where a webhook URL was checked to lead: what to connect to and what to call it."""

    scheme: str
    # The URL's host as written (the Host header, the TLS server name).
    host: str
    port: int
    # Path and query, "/" at least.
    path: str
    # Every address the host resolved to, each checked; tried in the resolver's order.
    addresses: tuple[IPAddress, ...]

    def request_url(self, address: IPAddress) -> str:
        """The URL with a checked address in place of the host."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not go to `address`, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "site-local"
        # An IPv4 address carried inside IPv6 is judged as that IPv4 address.
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            address = embedded
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "not public"
    return None


def _split(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"is not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlRefused("must be an http or https URL")
    if not parts.hostname:
        raise WebhookUrlRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("must not carry credentials")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


async def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError) as exc:
        # Often passing (a resolver timeout, SERVFAIL): the queue tries again later.
        raise WebhookHostUnresolved(f"host {host!r} does not resolve now: {exc}") from exc
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise WebhookUrlRefused(f"host {host!r} does not resolve")
    return found


async def check_webhook_url(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host once and check every address; the target to connect to."""
    scheme, host, port, path = _split(url)
    addresses = await _addresses(host, port)
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise WebhookUrlRefused(f"resolves to a {why} address ({address})")
    return Target(scheme=scheme, host=host, port=port, path=path, addresses=tuple(addresses))


def message_id(prediction_id: str) -> str:
    """The webhook-id: one per prediction, so every retry carries the same one."""
    return f"msg_{prediction_id}"


def payload(prediction_id: str, succeeded: bool, output_url: str, error: str) -> bytes:
    body = {
        "exec_id": prediction_id,
        "status": "succeeded" if succeeded else "failed",
        "output": output_url,
        "error": error,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers for one try."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=moment, data=body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before try `attempt + 2` (attempt 0 failed first): exponential from `base`,
    at most `cap`, with "equal jitter" (half fixed, half random) so that the receivers of
    many webhooks that failed together are not all called again at the same instant."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Delivery:
    """One try's outcome: delivered (a 2xx), or why not."""

    delivered: bool
    status_code: int | None = None
    problem: str = ""


class WebhookSender:
    """POSTs signed webhooks to checked addresses, one try per call."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._timeout = timeout
        # No pooled connections: the pool keys on the address, not the name a TLS certificate
        # was checked for, so a kept connection could carry one host's payload to another that
        # shares its address. A webhook per prediction needs no pool anyway.
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, secret: str, msg_id: str, body: bytes) -> Delivery:
        """One try. WebhookUrlRefused when the URL may not be called (no point retrying)."""
        target = await check_webhook_url(url, allow_private=self._allow_private)
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signed_headers(secret, msg_id, body, int(time.time())),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        response: httpx.Response | None = None
        problem = ""
        # The checked addresses in turn, the next only when one cannot be connected to (as a
        # browser would with "localhost" → ::1, 127.0.0.1): never an address not checked.
        for address in target.addresses:
            try:
                # The whole try within the timeout (httpx's applies per read, so a receiver
                # trickling bytes could hold a worker slot for ever), and the answer's body is
                # never read: its status is all a webhook needs, and a huge one must not land
                # in the worker's memory.
                async with asyncio.timeout(self._timeout):
                    request = self._client.build_request(
                        "POST",
                        target.request_url(address),
                        content=body,
                        headers=headers,
                        extensions=extensions,
                    )
                    response = await self._client.send(request, stream=True)
                    await response.aclose()
                break
            except httpx.ConnectError as exc:
                problem = f"cannot connect to {address}: {exc}"[:300]
            except (httpx.HTTPError, TimeoutError) as exc:
                return Delivery(False, problem=f"{type(exc).__name__}: {exc}"[:300])
        if response is None:
            return Delivery(False, problem=problem)
        if 200 <= response.status_code < 300:
            return Delivery(True, response.status_code)
        return Delivery(False, response.status_code, f"answered {response.status_code}")


class WebhookNotDelivered(Exception):
    """A try that got no 2xx; the queue tries again while the deadline allows."""


class WebhookHostUnresolved(Exception):
    """The receiver's host did not resolve this time; unlike a refused address, retried."""


def error_text(prediction: Prediction) -> str:
    """The payload's `error`: what went wrong, or "" for a success."""
    if prediction.status != "error":
        return ""
    message = prediction.message or "failed"
    return f"{message}: {prediction.details}" if prediction.details else message


class WebhookDeliverer:
    """The webhook job: one try at telling a finished prediction's webhook_url how it ended."""

    def __init__(self, store: PredictionStore, signer: UrlSigner, sender: WebhookSender) -> None:
        self._store = store
        self._signer = signer
        self._sender = sender

    async def deliver(self, prediction_id: str, attempts: int) -> None:
        """Send it; WebhookNotDelivered when the receiver did not take it (retried later). A URL
        now refused (its host moved to a refused address) is given up at once."""
        prediction = await self._store.load(prediction_id)
        if prediction is None or prediction.webhook_url is None or not prediction.finished:
            _log.error("no finished prediction %s with a webhook", prediction_id)
            return
        # The account's secret as it is now: a rotation applies to every later try.
        secret = await self._store.webhook_secret(prediction.account_id)
        body = payload(
            prediction.id,
            prediction.status == "success",
            output_url(self._signer, prediction),
            error_text(prediction),
        )
        extra = {"prediction_id": prediction.id, "attempt": attempts + 1}
        try:
            delivery = await self._sender.send(
                prediction.webhook_url, secret.secret, message_id(prediction.id), body
            )
        except WebhookUrlRefused as refused:
            metrics.count_webhook_attempt("refused")
            _log.warning("webhook not sent: %s", refused, extra=extra)
            return
        except WebhookHostUnresolved as unresolved:
            _log.info("webhook not sent yet: %s", unresolved, extra=extra)
            raise WebhookNotDelivered(str(unresolved)) from unresolved
        if not delivery.delivered:
            _log.info("webhook not delivered: %s", delivery.problem, extra=extra)
            raise WebhookNotDelivered(delivery.problem)
        metrics.count_webhook_attempt("delivered")
        _log.info("webhook delivered", extra={**extra, "status_code": delivery.status_code})
