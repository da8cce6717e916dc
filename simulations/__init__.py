"""Federated round simulation over the real coordinator service and edge client.

Three parts, in layers (each imports only the ones below it):

- :mod:`simulations.demo`: the end-to-end demo (``python -m simulations.demo``,
  ``make demo``): every fedge tool as its own process on loopback;
- :mod:`simulations.cli` (``fedge-simulate``) over the engine: :mod:`~simulations.settings`,
  :mod:`~simulations.preparation`, :mod:`~simulations.runner`, the native and TFF engines
  and their fleet, scenario and workload; :mod:`simulations.report` writes and prints what
  a simulation or the demo measured;
- :mod:`simulations.inputs`: the user's own files and model (bring your own).

Errors are in :mod:`simulations.errors`; child processes are run with
:mod:`fedge.processes`.
"""
