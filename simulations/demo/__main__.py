"""``python -m simulations.demo``: see :mod:`simulations.demo.cli`."""

from simulations.demo.cli import main

main()
