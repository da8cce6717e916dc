"""Edits of a tensorflow-metadata ``Schema``, the way TFDV users fix anomalies by hand.

Each function changes one feature of a ``schema_pb2.Schema`` in place and returns a short
sentence saying what it did; the ``fedge-coordinator data schema`` command loads the
schema, applies one edit and writes the file back atomically.

- :func:`add_domain_value`: a value joins the feature's string domain (the named
  top-level ``string_domain`` the feature refers to, or its own inline one).
- :func:`set_min_domain_mass`: ``distribution_constraints.min_domain_mass``, the share of
  values that must lie in the domain (below 1.0, a few unexpected values are tolerated).
- :func:`set_drift` / :func:`set_skew`: the ``drift_comparator`` / ``skew_comparator``
  threshold; the comparator kind follows the feature's type as in TFDV: L-infinity
  distance (``infinity_norm``) for a categorical feature (BYTES, or INT marked
  categorical), Jensen-Shannon divergence for a numeric one; ``kind`` overrides that
  (fedge's statistics hold integer codes as strings, which an ``INT`` feature may be).
- :func:`set_presence`: ``presence.min_fraction``, the share of examples that must have
  the feature.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tensorflow_metadata.proto.v0 import schema_pb2

from fedge.errors import ConfigError

__all__ = [
    "COMPARATOR_KINDS",
    "EDITS",
    "add_domain_value",
    "comparator_kind",
    "find_feature",
    "set_drift",
    "set_min_domain_mass",
    "set_presence",
    "set_skew",
]


def find_feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    """The schema's feature ``name`` (ConfigError naming the features when absent)."""
    for feature in schema.feature:
        if feature.name == name:
            return feature
    names = ", ".join(sorted(f.name for f in schema.feature)) or "none"
    raise ConfigError(f"the schema has no feature {name!r}; its features: {names}")


def _fraction(value: float, what: str) -> float:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what} must be between 0 and 1, got {value!r}")
    return value


def _threshold(value: float) -> float:
    if not math.isfinite(value) or value < 0.0:
        raise ConfigError(f"a threshold must be a finite number >= 0, got {value!r}")
    return value


def _string_domain(
    schema: schema_pb2.Schema, feature: schema_pb2.Feature
) -> schema_pb2.StringDomain:
    kind = feature.WhichOneof("domain_info")
    if kind == "string_domain":
        return feature.string_domain
    if kind == "domain":
        for domain in schema.string_domain:
            if domain.name == feature.domain:
                return domain
        raise ConfigError(
            f"feature {feature.name!r} refers to string domain {feature.domain!r}, "
            "which the schema does not define"
        )
    raise ConfigError(
        f"feature {feature.name!r} has no string domain"
        + (f" (it has a {kind})" if kind else "")
        + "; only a feature with a string domain takes domain values"
    )


def add_domain_value(schema: schema_pb2.Schema, feature_name: str, value: str) -> str:
    """Add ``value`` to the string domain of ``feature_name`` (no change if present)."""
    feature = find_feature(schema, feature_name)
    domain = _string_domain(schema, feature)
    where = f"domain {domain.name!r}" if domain.name else f"the domain of {feature_name!r}"
    if value in domain.value:
        return f"{value!r} is already in {where}; nothing changed"
    domain.value.append(value)
    return f"added {value!r} to {where} ({len(domain.value)} values)"


def set_min_domain_mass(schema: schema_pb2.Schema, feature_name: str, mass: float) -> str:
    """Set ``distribution_constraints.min_domain_mass`` of ``feature_name``."""
    feature = find_feature(schema, feature_name)
    feature.distribution_constraints.min_domain_mass = _fraction(mass, "min_domain_mass")
    return f"min_domain_mass of {feature_name!r} is {mass:g}"


def comparator_kind(feature: schema_pb2.Feature) -> str:
    """``infinity_norm`` for a categorical feature, ``jensen_shannon_divergence`` else."""
    categorical = feature.type == schema_pb2.BYTES or (
        feature.type == schema_pb2.INT
        and feature.WhichOneof("domain_info") == "int_domain"
        and feature.int_domain.is_categorical
    )
    return "infinity_norm" if categorical else "jensen_shannon_divergence"


COMPARATOR_KINDS = ("infinity_norm", "jensen_shannon_divergence")


def _set_comparator(
    schema: schema_pb2.Schema,
    feature_name: str,
    threshold: float,
    *,
    field: str,
    kind: str | None,
) -> str:
    feature = find_feature(schema, feature_name)
    if kind is None:
        kind = comparator_kind(feature)
    elif kind not in COMPARATOR_KINDS:
        raise ConfigError(f"comparator kind {kind!r} is not one of {', '.join(COMPARATOR_KINDS)}")
    comparator = getattr(feature, field)
    getattr(comparator, kind).threshold = _threshold(threshold)
    return f"{field} of {feature_name!r}: {kind} threshold {threshold:g}"


def set_drift(
    schema: schema_pb2.Schema, feature_name: str, threshold: float, *, kind: str | None = None
) -> str:
    """Set the drift comparator threshold of ``feature_name`` (``kind``: from its type)."""
    return _set_comparator(schema, feature_name, threshold, field="drift_comparator", kind=kind)


def set_skew(
    schema: schema_pb2.Schema, feature_name: str, threshold: float, *, kind: str | None = None
) -> str:
    """Set the skew comparator threshold of ``feature_name`` (``kind``: from its type)."""
    return _set_comparator(schema, feature_name, threshold, field="skew_comparator", kind=kind)


def set_presence(schema: schema_pb2.Schema, feature_name: str, min_fraction: float) -> str:
    """Set ``presence.min_fraction`` of ``feature_name``."""
    feature = find_feature(schema, feature_name)
    feature.presence.min_fraction = _fraction(min_fraction, "min_fraction")
    return f"presence.min_fraction of {feature_name!r} is {min_fraction:g}"


EDITS: dict[str, Callable[..., str]] = {
    "add-domain-value": add_domain_value,
    "set-min-domain-mass": set_min_domain_mass,
    "set-drift": set_drift,
    "set-skew": set_skew,
    "set-presence": set_presence,
}
"""The edit of each ``data schema`` verb."""
