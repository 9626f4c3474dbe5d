"""``python -m edgeplane`` is the ``edgeplane`` command."""

from edgeplane.cli.main import main

main()
