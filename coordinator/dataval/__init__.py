"""Data validation in tensorflow-metadata's formats, with TensorFlow Data Validation's semantics.

fedge's mergeable statistics (:mod:`fedge.stats`, computed on the cloud's own data or merged
from device reports) become a ``DatasetFeatureStatisticsList`` (:mod:`.statistics`); a
``Schema`` is inferred from them or loaded from a text proto (:mod:`.schema`); and
:func:`~coordinator.dataval.anomalies.validate` checks statistics against a schema, and for
drift and skew against a previous span and serving data, into an ``Anomalies`` proto;
:mod:`.plots` draws them as PNGs and :mod:`.cli` is ``fedge-coordinator data``.
"""
