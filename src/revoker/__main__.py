"""``python -m revoker``: the same as the ``revoker`` command."""

from revoker._console import main

main()
