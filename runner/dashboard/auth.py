"""Who may use the dashboard: a client that holds the admin token.

A script sends the token in ``Authorization: Bearer``. A browser posts it once to the
login form and gets a session cookie signed with a key derived from the token (so a
new token ends every session), HttpOnly and SameSite=Strict. Every form carries a CSRF
token tied to that session; a request authenticated by the header needs none, since a
cross-site page cannot set it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.datastructures import Headers

from runner.ratelimit import FailureLimiter

__all__ = ["COOKIE_NAME", "SESSION_SECONDS", "Gate", "Visitor", "is_loopback"]

COOKIE_NAME = "agentmail_runner_dashboard"
SESSION_SECONDS = 12 * 3600

# Wrong tokens allowed per client before answers turn to 429.
FAILED_LOGINS_PER_MINUTE = 10
FAILED_LOGINS_BURST = 10


@dataclass(frozen=True)
class Visitor:
    """An authenticated client: by "bearer" header or by "cookie" (with its CSRF
    token)."""

    via: str
    csrf: str = ""


def is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Gate:
    """Checks tokens, issues and reads session cookies, and checks CSRF tokens."""

    def __init__(self, token: str, *, allow_remote: bool) -> None:
        self._token = token.encode("utf-8")
        key = hmac.new(
            self._token, b"agentmail-runner dashboard session", hashlib.sha256
        ).digest()
        self._sessions = URLSafeTimedSerializer(key, salt="dashboard-session")
        self.allow_remote = allow_remote
        self.limiter = FailureLimiter(
            per_minute=FAILED_LOGINS_PER_MINUTE, burst=FAILED_LOGINS_BURST
        )

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode("utf-8"), self._token)

    def new_session(self) -> str:
        """A signed cookie value for a fresh session."""
        return self._sessions.dumps({"csrf": secrets.token_urlsafe(24)})

    def bearer(self, headers: Headers) -> str | None:
        """The token in the Authorization header, or None when there is none."""
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def session(self, cookie: str | None) -> Visitor | None:
        """The visitor a session cookie proves, or None (absent, forged, expired)."""
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        csrf = data.get("csrf") if isinstance(data, dict) else None
        return Visitor("cookie", str(csrf)) if csrf else None

    def csrf_ok(self, visitor: Visitor, submitted: str | None) -> bool:
        if visitor.via == "bearer":
            return True
        return bool(submitted) and hmac.compare_digest(
            str(submitted).encode("utf-8"), visitor.csrf.encode("utf-8")
        )
