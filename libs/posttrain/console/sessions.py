"""Signed-in people: the API key stays in the console's memory, never in the browser.

The browser holds only a random session id, signed with the console's secret (HMAC) and
sent back as an HttpOnly, SameSite=Strict cookie; every form carries a CSRF token derived
from the session id. A restart of the console signs everyone out (keys are not written
anywhere), which is the safe side.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from posttrain.v1 import common_pb2

ADMIN = "admin"


@dataclass
class SignedIn:
    """One person's session: who the services say the key belongs to, and the key."""

    session_id: str
    api_key: str
    name: str
    roles: frozenset[str]
    tenant: str
    last_seen: float = field(default_factory=time.monotonic)

    def may(self, *roles: str) -> bool:
        """Whether the key holds any of `roles` (admin holds them all): only to grey out
        buttons; the service decides."""
        return ADMIN in self.roles or any(r in self.roles for r in roles)


class SessionBook:
    def __init__(
        self,
        secret: bytes,
        *,
        idle_timeout_s: float = 8 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the console's session secret must be at least 16 bytes")
        self._secret = secret
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._sessions: dict[str, SignedIn] = {}
        self._lock = threading.Lock()

    def _sign(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()

    def start(self, api_key: str, principal: common_pb2.Principal) -> tuple[SignedIn, str]:
        """A new session for a key the services accepted; returns it and its cookie value."""
        session_id = secrets.token_urlsafe(24)
        signed_in = SignedIn(
            session_id=session_id,
            api_key=api_key,
            name=principal.name,
            roles=frozenset(principal.roles),
            tenant=principal.tenant,
            last_seen=self._clock(),
        )
        with self._lock:
            self._sessions[session_id] = signed_in
        return signed_in, f"{session_id}.{self._sign(session_id)}"

    def resolve(self, cookie: str | None) -> SignedIn | None:
        """The session of a well-signed, live cookie; None otherwise."""
        if not cookie or "." not in cookie:
            return None
        session_id, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        now = self._clock()
        with self._lock:
            signed_in = self._sessions.get(session_id)
            if signed_in is None:
                return None
            if now - signed_in.last_seen > self._idle_timeout_s:
                del self._sessions[session_id]
                return None
            signed_in.last_seen = now
            return signed_in

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def csrf_token(self, signed_in: SignedIn) -> str:
        return self._sign(f"csrf:{signed_in.session_id}")

    def csrf_ok(self, signed_in: SignedIn, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf_token(signed_in))
