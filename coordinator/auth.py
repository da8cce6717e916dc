"""Tokens and their hygiene: random, stored only as sha256, compared in constant time,
never logged.

Client tokens are ``fedge_`` + 32 random bytes (urlsafe base64); the prefix lets the log
filter (and secret scanners) recognise one anywhere. The admin token comes from a file or
the ``FEDGE_ADMIN_TOKEN`` environment variable, never from a command-line value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from coordinator.errors import AuthenticationError, CoordinatorError
from coordinator.logsafe import printable
from fedge.errors import ConfigError

__all__ = [
    "ADMIN_TOKEN_ENV",
    "TOKEN_PREFIX",
    "VIEWER_TOKEN_ENV",
    "RedactingFilter",
    "actor_id",
    "bearer_token",
    "hash_token",
    "load_secret",
    "new_token",
    "redact",
    "registration_identity",
    "token_matches",
]

TOKEN_PREFIX = "fedge_"  # noqa: S105 (a prefix, not a secret)
ADMIN_TOKEN_ENV = "FEDGE_ADMIN_TOKEN"  # noqa: S105 (a variable name)
ENROLLMENT_TOKEN_ENV = "FEDGE_ENROLLMENT_TOKEN"  # noqa: S105 (a variable name)
VIEWER_TOKEN_ENV = "FEDGE_VIEWER_TOKEN"  # noqa: S105 (a variable name)
_MAX_TOKEN = 512
_REGISTRATION_KEY = re.compile(r"[A-Za-z0-9_-]{32,128}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_ASSIGNMENT = re.compile(r"(?i)((?:token|authorization|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+")
_PREFIXED = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")
REDACTED = "[REDACTED]"
_MAX_LOG_MESSAGE = 8192


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def registration_identity(key: str) -> tuple[str, str]:
    """The client id and token that a device's registration key stands for.

    A device that registers with ``Idempotency-Key: KEY`` (32-128 characters of
    ``A-Za-z0-9_-``, e.g. 32 random bytes in urlsafe base64, persisted before the first
    attempt) gets the same client and the same token however often it retries, so a
    registration whose answer was lost never leaves a second client behind. The key is the
    device's secret: whoever holds it holds that client's token; the coordinator stores
    neither, only the token's hash.
    """
    if not isinstance(key, str) or not _REGISTRATION_KEY.fullmatch(key):
        raise CoordinatorError(
            "Idempotency-Key must be 32-128 characters of letters, digits, '_' and '-'",
            code="invalid_registration_key",
        )
    material = key.encode("ascii")
    client_id = "c-" + hashlib.sha256(b"fedge client id\0" + material).hexdigest()[:12]
    secret = hashlib.sha256(b"fedge client token\0" + material).digest()
    return client_id, TOKEN_PREFIX + base64.urlsafe_b64encode(secret).rstrip(b"=").decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def actor_id(role: str, token: str) -> str:
    """``<role>:<first 12 hex of sha256(token)>``: names an operator's token in the
    registry's history (``ModelEvent.actor``) and the log without revealing it."""
    return f"{role}:{hash_token(token)[:12]}"


def token_matches(token: str, expected_hash: str) -> bool:
    """Constant-time comparison of ``token``'s hash with ``expected_hash``."""
    return hmac.compare_digest(hash_token(token), expected_hash)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or AuthenticationError."""
    if not header:
        raise AuthenticationError(
            "missing Authorization header: send 'Authorization: Bearer <token>'",
            code="missing_token",
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > _MAX_TOKEN:
        raise AuthenticationError(
            "malformed Authorization header: expected 'Bearer <token>'", code="invalid_token"
        )
    return token


def load_secret(path: str | Path | None, env_var: str) -> str | None:
    """A secret from a file (first line) or, without a file, the environment; else None."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if len(text) < 16:
            raise ConfigError(f"the token in {path} is shorter than 16 characters")
        return text
    value = os.environ.get(env_var, "").strip()
    if value and len(value) < 16:
        raise ConfigError(f"{env_var} is shorter than 16 characters")
    return value or None


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``token=...`` values and fedge tokens masked."""
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
    return _PREFIXED.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Masks anything that looks like a token in every record a handler emits, and escapes
    control characters in its message (:func:`coordinator.logsafe.printable`), so no value a
    client sent can forge a line, whichever logger quotes it.

    Attach it to handlers (not loggers) so records from every library pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = printable(redact(message), limit=_MAX_LOG_MESSAGE)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
