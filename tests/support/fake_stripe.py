"""A stand-in for Stripe's API at the network edge, and webhook events signed as Stripe signs them.

Stripe cannot be reached from here. The dashboard runs its real Stripe code (the `stripe`
library) against this server through DASHBOARD_STRIPE_API_BASE: it answers Checkout Session
creation and serves a page where the browser lands to "pay". Payments are then confirmed the
way Stripe does it, with a `checkout.session.completed` event signed with the webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

SECRET_KEY = "sk_test_kokoropay_local"
WEBHOOK_SECRET = "whsec_kokoropay_test_secret"


class FakeStripe:
    """Records each Checkout Session the dashboard creates (its form fields, flattened)."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, str]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", "0"))
                fields = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path != "/v1/checkout/sessions":
                    self._json(404, {"error": {"message": "unknown path"}})
                    return
                session_id = f"cs_test_{uuid.uuid4().hex}"
                fake.sessions[session_id] = fields
                self._json(
                    200,
                    {
                        "id": session_id,
                        "object": "checkout.session",
                        "url": f"{fake.url}/pay/{session_id}",
                        "metadata": {
                            "account_id": fields.get("metadata[account_id]"),
                            "credits": fields.get("metadata[credits]"),
                            "amount_cents": fields.get("metadata[amount_cents]"),
                            "currency": fields.get("metadata[currency]"),
                        },
                    },
                )

            def do_GET(self) -> None:  # noqa: N802
                body = b"<!doctype html><title>Pay</title><h1>Fake checkout</h1>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, data: dict[str, Any]) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def completed_checkout_event(
    session: dict[str, str], session_id: str, *, amount_total: int, event_id: str | None = None
) -> dict[str, Any]:
    """The `checkout.session.completed` event Stripe sends once the customer has paid."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "payment_status": "paid",
                "amount_total": amount_total,
                "currency": session["line_items[0][price_data][currency]"],
                "client_reference_id": session["client_reference_id"],
                "metadata": {
                    "account_id": session["metadata[account_id]"],
                    "credits": session["metadata[credits]"],
                    "amount_cents": session["metadata[amount_cents]"],
                    "currency": session["metadata[currency]"],
                },
            }
        },
    }


def signed(event: dict[str, Any], secret: str = WEBHOOK_SECRET) -> tuple[bytes, str]:
    """The body and `Stripe-Signature` header Stripe would send for `event`."""
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={mac.hexdigest()}"
