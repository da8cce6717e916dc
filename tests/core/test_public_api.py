"""The core's public API is exactly what ``fedge.__all__`` lists, and every name resolves."""

from __future__ import annotations

import fedge
import fedge.data


def test_public_api_names_resolve() -> None:
    missing = [name for name in fedge.__all__ if not hasattr(fedge, name)]
    assert missing == []
    assert len(set(fedge.__all__)) == len(fedge.__all__)


def test_public_api_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(fedge).items()
        if not name.startswith("_") and not isinstance(value, type(fedge))
    }
    assert public == {n for n in fedge.__all__ if not n.startswith("_")}


def test_data_package_api_resolves() -> None:
    assert all(hasattr(fedge.data, name) for name in fedge.data.__all__)
    assert {"load_digits", "load_taxi", "dirichlet", "iid", "by_key"} <= set(fedge.data.__all__)


def test_error_tree_has_one_root() -> None:
    errors = [getattr(fedge, n) for n in fedge.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, fedge.FedgeError) for e in errors)
