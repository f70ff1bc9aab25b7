"""``python -m revoker``: the same as the ``revoker`` command."""

from revoker.cli import main

main()
