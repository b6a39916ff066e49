"""``python -m psfkit``: the ``psfkit`` command."""

from psfkit.cli import main

main()
