"""The operator's dashboard, served by the coordinator under ``/ui/``: server-rendered
pages (overview, rounds, models, clients, data, alerts) over the same service and store
calls as the REST API, a login with the viewer or the admin token (CSRF-protected and
rate-limited), server-side sessions, CSRF-protected actions (admin only) recorded in the
registry's history, and a strict Content Security Policy.

:func:`install_ui` adds it to an app built by :func:`coordinator.rest.create_app` (its
``ui`` argument). The routes are HTML, not part of the REST API: the OpenAPI document
leaves them out.
"""

from __future__ import annotations

from coordinator.ui.app import UI_PREFIX, UiConfig
from coordinator.ui.install import install_ui

__all__ = ["UI_PREFIX", "UiConfig", "install_ui"]
