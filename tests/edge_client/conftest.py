"""Fixtures of the edge-client tests: ``edge_digits_bundle`` and ``edge_taxi_bundle``, real
edge bundles of the two reference tasks built once per session, are in ``tests/conftest.py``
(the hostile tests use the taxi one too)."""
