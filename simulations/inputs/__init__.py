"""Bring-your-own inputs of ``fedge-simulate``: the user's files and Keras model.

- :mod:`simulations.inputs.files`: ``--data``, ``--init``, ``--partition-file`` and
  ``--schedule-file``, each read and checked without TensorFlow (one-line ConfigError);
- :mod:`simulations.inputs.model`: ``--model``, checked, prepared for the devices and
  bundled (imports TensorFlow).

This package imports only the engine's bottom layer (:mod:`simulations.workload`); the
engine (:mod:`simulations.settings`, :mod:`simulations.preparation`) imports it.
"""
