"""``python -m pulse`` is the ``pulse`` command."""

from pulse.cli import main

main()
