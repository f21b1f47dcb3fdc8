"""The dashboard's cookies: names, flags and prefixes in one place.

All are `HttpOnly` (no script reads them) and `SameSite` (Lax, Strict for the new key), and
`Secure` wherever the dashboard is served over HTTPS (DASHBOARD_COOKIE_SECURE). Secure ones
also carry the browser-enforced name prefixes: `__Host-` (only this host, path "/", set over
HTTPS) so neither a sibling subdomain nor a plain-HTTP page can plant a session or CSRF cookie,
and `__Secure-` for the one scoped to a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

SESSION = "kp_session"
PRESESSION = "kp_csrf"
NEW_KEY = "kp_new_key"


@dataclass(frozen=True)
class Cookies:
    secure: bool

    def name(self, base: str, path: str = "/") -> str:
        if not self.secure:
            return base
        return f"__Host-{base}" if path == "/" else f"__Secure-{base}"

    def read(self, request: Request, base: str, path: str = "/") -> str:
        return request.cookies.get(self.name(base, path), "")

    def set(
        self,
        response: Response,
        base: str,
        value: str,
        *,
        path: str = "/",
        max_age: int | None = None,
        samesite: Literal["lax", "strict"] = "lax",
    ) -> None:
        response.set_cookie(
            self.name(base, path),
            value,
            max_age=max_age,
            path=path,
            httponly=True,
            samesite=samesite,
            secure=self.secure,
        )

    def delete(
        self,
        response: Response,
        base: str,
        *,
        path: str = "/",
        samesite: Literal["lax", "strict"] = "lax",
    ) -> None:
        response.delete_cookie(
            self.name(base, path), path=path, httponly=True, samesite=samesite, secure=self.secure
        )
