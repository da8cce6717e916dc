"""The end-to-end demo (``python -m simulations.demo``, ``make demo``).

Every fedge tool runs as its own process on loopback, started and stopped with
:mod:`fedge.processes`:

- :mod:`~simulations.demo.cli`: the command line (on :mod:`fedge.cli`);
- :mod:`~simulations.demo.config`: :class:`~simulations.demo.config.DemoConfig`;
- :mod:`~simulations.demo.job`: the six steps and the output folder;
- :mod:`~simulations.demo.data`: the test split, the cloud's proxy share, the devices' rows;
- :mod:`~simulations.demo.tools`: the tools' command lines;
- :mod:`~simulations.demo.coordinator`: starting the coordinator, its admin API;
- :mod:`~simulations.demo.evaluation`: scoring each version, the devices' evaluations;
- :mod:`~simulations.demo.result`: what a run measured (printed and written with
  :mod:`simulations.report`).
"""
