"""Who may use the console: whoever has ENGINE_CONSOLE_TOKEN, then a signed session cookie; a CSRF token checked on
every request that changes something.

The session is a cookie signed with a key derived from the token (itsdangerous, as Starlette's SessionMiddleware
signs), so it holds across restarts and `--workers N`, and changing the token signs every session out. Signing
out ends it in the outbox too (engine.outbox's console_signouts, read on every request by every process): a
copy of the cookie taken before stops working at once, and "sign out everywhere" ends every session begun
before it. HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Secure when the
request came over HTTPS, scoped to the console's path. Its CSRF token goes into every form and into the header
of the playground's requests; a request without it changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from engine.outbox import CONSOLE_SESSION_SECONDS

COOKIE = "aircall_console"
SESSION_SECONDS = CONSOLE_SESSION_SECONDS
CSRF_FIELD = "csrf"  # the form field
CSRF_HEADER = "x-csrf-token"  # the header, for fetch()


@dataclass(frozen=True)
class Session:
    csrf: str
    signed_in: bool = False
    flash: str | None = None  # one line shown on the next page, after an action
    begun_at: float = 0.0  # when it was signed in (a cookie of an older version: 0, begun before any sign-out)

    @property
    def key(self) -> str:
        """What the outbox knows it by when it is ended: a digest, so that the table holds nothing usable."""
        return hashlib.sha256(self.csrf.encode()).hexdigest()[:32]


class Gate:
    def __init__(self, token: str) -> None:
        key = hmac.new(token.encode(), b"aircall-segment console session", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(key, salt="console-session")
        self._digest = hashlib.sha256(token.encode()).digest()

    def token_matches(self, given: str) -> bool:
        """Constant time: digests make the lengths equal, so neither a prefix nor a length is learnt."""
        candidate = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(candidate, self._digest)

    def session(self, request: Request) -> Session | None:
        """The request's session, if its cookie is one this console signed, within its lifetime."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_SECONDS)
        except BadSignature:  # also: expired, malformed
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        flash = data.get("f")
        begun = data.get("t")
        return Session(
            data["c"],
            data.get("s") is True,
            flash if isinstance(flash, str) else None,
            float(begun) if isinstance(begun, int | float) else 0.0,
        )

    @staticmethod
    def new_session(signed_in: bool) -> Session:
        return Session(secrets.token_urlsafe(32), signed_in, begun_at=time.time())

    def cookie_value(self, session: Session) -> str:
        data: dict[str, object] = {"c": session.csrf, "s": session.signed_in, "t": session.begun_at}
        if session.flash:
            data["f"] = session.flash
        return self._serializer.dumps(data)

    def keep(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.cookie_value(session),
            max_age=SESSION_SECONDS,
            path=cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def forget(response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path=cookie_path(request), httponly=True, samesite="strict")


def csrf_matches(session: Session | None, given: object) -> bool:
    if session is None or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), session.csrf.encode())


def cookie_path(request: Request) -> str:
    """The console's own path (its mount point), so that no other route of the server ever receives the cookie."""
    return request.scope.get("root_path") or "/console"
