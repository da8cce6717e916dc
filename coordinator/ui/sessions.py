"""The dashboard's server-side sessions: a random id in the cookie stands for a role, the
token id it logged in with, a CSRF token and an expiry; the token itself is never kept.

Sessions live in the memory of the process that created them (a restart logs everyone
out; behind several replicas, route a browser to one replica). Ids are 32 random bytes;
only their sha256 is kept, so a lookup compares digests, not the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from fedge.validation import check_int, check_positive

__all__ = ["Role", "SessionStore", "UiSession"]

Role: TypeAlias = Literal["viewer", "admin"]


@dataclass(frozen=True)
class UiSession:
    """One logged-in browser."""

    role: Role
    actor: str
    csrf_token: str
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf_token.encode())


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionStore:
    """Sessions by id; an expired one is gone. At most ``max_sessions`` at once: a new
    login beyond that drops the session closest to its expiry."""

    def __init__(
        self,
        *,
        lifetime_seconds: float = 8 * 3600.0,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime_seconds = check_positive(lifetime_seconds, "lifetime_seconds")
        self._max = check_int(max_sessions, "max_sessions", low=1)
        self._clock = clock
        self._sessions: dict[str, UiSession] = {}
        self._lock = threading.Lock()

    def create(self, role: Role, actor: str) -> tuple[str, UiSession]:
        """A new session: ``(id for the cookie, session)``."""
        session_id = secrets.token_urlsafe(32)
        session = UiSession(
            role=role,
            actor=actor,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.lifetime_seconds,
        )
        with self._lock:
            self._expire()
            while len(self._sessions) >= self._max:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires_at)
                del self._sessions[oldest]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> UiSession | None:
        if not session_id:
            return None
        key = _digest(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[key]
                return None
            return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]
