"""The gRPC adapter: the services of :mod:`fedge.protocol` (``fedge.v1.Fleet``,
``fedge.v1.Admin``) over the same :class:`~coordinator.rest.state.RestState` as the REST
app, so both transports share one service, one configuration and one registration rate
limiter.

Thin by design, like the REST views: a handler decodes (:mod:`fedge.protocol.codec`),
checks access (:mod:`coordinator.access`), calls the shared device or admin functions and
encodes. Errors become status codes in :mod:`coordinator.rpc.errors`, the one mapping;
:func:`coordinator.rpc.server.start_grpc_server` serves the handlers.
"""
