"""Bring-your-own inputs of ``fedge-simulate``: the user's files and Keras model.

- :mod:`simulations.inputs.files`: the data, init, partition and schedule files
  (``fedge-simulate --data``, ``--init``, ``--partition-file``, ``--schedule-file``), each
  read and checked without TensorFlow (one-line ConfigError naming the kind of file);
- :mod:`simulations.inputs.model`: the model file (``--model``), checked, prepared for the
  devices and bundled (imports TensorFlow).

This package imports only the engine's bottom layer (:mod:`simulations.workload`) and
:mod:`simulations.errors`; the engine (:mod:`simulations.settings`,
:mod:`simulations.preparation`) imports it.
"""
