"""Who is signed in to the dashboard, and the checks on what a browser sends.

The API token itself is the session: it lives in an HttpOnly, SameSite=Strict cookie
(no script can read it, no other site's page sends it), and every request looks it up
in the token table again, so a revoked token signs its browser out at once. A form post
carries a CSRF value derived from that token under a key of this process; a page from
elsewhere cannot compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from frostpoint.service.tokens import Caller, Tokens

COOKIE = "frostpoint_session"

# The dashboard's pages run only the scripts and styles the service serves itself.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make form posts Origin: null
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Session:
    caller: Caller
    token: str
    csrf: str


class WebAuth:
    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._key = secrets.token_bytes(32)  # a restart asks open forms to reload

    def csrf_for(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        who = self.tokens.authenticate(token)
        return Session(who, token, self.csrf_for(token)) if who else None

    @staticmethod
    def same_origin(request: Request) -> bool:
        """A post whose Origin (or Referer) names another site is refused, whatever
        else it carries; a browser that sends neither still needs the CSRF value."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def post_allowed(self, request: Request, form_csrf: str, session: Session) -> bool:
        return self.same_origin(request) and hmac.compare_digest(form_csrf, session.csrf)
