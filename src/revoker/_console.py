"""The ``revoker`` console script (and ``python -m revoker``): :func:`revoker.cli.main`, guarded.

The script is installed with the core package, but the CLI is click, which comes with the
``server`` extra. Without it the script says which extra to install and exits with the usage
code instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Final

from revoker._extras import requires_extra
from revoker.exceptions import MissingExtra

__all__ = ["EXIT_MISSING_EXTRA", "main"]

#: revoker.cli.EXIT_USAGE, which cannot be imported without click (tests check they agree).
EXIT_MISSING_EXTRA: Final = 2


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, or explain which extra it needs."""
    try:
        with requires_extra("server", "the revoker command"):
            from revoker.cli import main as cli_main
    except MissingExtra as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_MISSING_EXTRA) from None
    cli_main(argv)
