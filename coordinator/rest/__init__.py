"""The REST adapter: a Flask app factory over a :class:`~coordinator.service.CoordinatorService`.

Thin by design: a view decodes, calls the service and encodes. The routes live in
blueprints, one access rule each, enforced by the blueprint's ``before_request``:

- ``public`` (:mod:`coordinator.rest.public`): ``/healthz`` and the OpenAPI document;
- ``monitoring`` (:mod:`coordinator.rest.public`): ``/metrics``, the admin token;
- ``enrollment``, ``devices``, ``downloads`` (:mod:`coordinator.rest.devices`): registration
  (rate-limited; open unless an enrollment token is configured), client-token calls, and
  downloads (a client or the admin);
- ``admin`` (:mod:`coordinator.rest.admin`): the admin token.

Errors become ``{"error": code, "detail": message}`` in :mod:`coordinator.rest.errors`, the
one mapping. The service and the :class:`ApiConfig` are in ``app.extensions["fedge"]``.
Only the methods the OpenAPI document lists are answered (and HEAD beside GET): there is
no automatic OPTIONS, which is a 405 like any other method a route does not have.
Serve the app with a production WSGI server (:mod:`coordinator.server` uses waitress),
never the dev server.
"""

from coordinator.rest.app import create_app
from coordinator.rest.state import ApiConfig

__all__ = ["ApiConfig", "create_app"]
