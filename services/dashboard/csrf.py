"""Cross-site request forgery: every form carries a token another site cannot know.

Signed in, the token is an HMAC keyed by the session token, which lives only in the
`HttpOnly` session cookie: a page on another origin can make the browser send the cookie but
can neither read it nor compute the token. Signed out (the sign-in and sign-up forms), there is
no session yet, so a random pre-session cookie (cookies.PRESESSION) plays the same part: it
stops a site from signing a visitor in to an account of the attacker's. Either way the
dashboard keeps no state for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

FIELD = "csrf_token"
_PURPOSE = b"kokoropay-dashboard-form"


def token_for(secret: str) -> str:
    """The token forms carry, for a session token or a pre-session cookie value."""
    digest = hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def matches(secret: str | None, presented: str | None) -> bool:
    """Whether a posted token belongs to `secret`; false when either is missing."""
    if not secret or not presented or len(presented) > 128:
        return False
    # Bytes: compare_digest refuses non-ASCII str, and a posted field may be anything.
    return hmac.compare_digest(token_for(secret).encode(), presented.encode())


def new_presession_secret() -> str:
    return secrets.token_urlsafe(32)
