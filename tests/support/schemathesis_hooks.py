"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks``): each
operation is called with the token its ``security`` names first.

The tokens come from the environment the test sets: ``FEDGE_ST_ADMIN_TOKEN``,
``FEDGE_ST_CLIENT_TOKEN`` (a registered device) and ``FEDGE_ST_ENROLLMENT_TOKEN``.
Operations without security go out without a token.

Generated header values lose the bytes HTTP cannot carry (RFC 9110 field values: visible
ASCII, space and tab): control bytes never reach the application, the HTTP server answers
them with its own plain-text 400 before routing.
"""

from __future__ import annotations

import os
import re
from typing import Any

import schemathesis

_TOKEN_ENV = {
    "adminToken": "FEDGE_ST_ADMIN_TOKEN",
    "clientToken": "FEDGE_ST_CLIENT_TOKEN",
    "enrollmentToken": "FEDGE_ST_ENROLLMENT_TOKEN",
}


_NOT_FIELD_VALUE = re.compile(r"[^\t\x20-\x7e]")


@schemathesis.hook
def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """Generated header values without the bytes HTTP forbids in them (nor the leading or
    trailing blanks an HTTP client refuses to send)."""
    if headers is None:
        return None
    return {
        name: _NOT_FIELD_VALUE.sub("", str(value)).strip(" \t") for name, value in headers.items()
    }


def _scheme(case: Any) -> str | None:
    for requirement in case.operation.definition.raw.get("security") or ():
        for name in requirement:
            return str(name)
    return None


# No caching: a cached answer would carry one operation's token (or none) to the next.
@schemathesis.auth(refresh_interval=None)
class OperationToken:
    """The bearer token of the first security scheme the operation lists."""

    def get(self, case: Any, context: Any) -> str | None:
        scheme = _scheme(case)
        if scheme is None:
            return None
        return os.environ[_TOKEN_ENV[scheme]]

    def set(self, case: Any, data: str | None, context: Any) -> None:
        if data is None:
            return
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
