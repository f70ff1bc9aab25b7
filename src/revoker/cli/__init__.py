"""``revoker``: the operators' command line.

Enqueue bulk revocations and follow them, revoke one token or one session, inspect a token, and
check that Redis and the broker answer. Configuration comes from the ``REVOKER_*`` environment
(see :mod:`revoker.settings`); nothing here has settings of its own.

Scripts can rely on the exit codes listed in :data:`EXIT_CODES` (and in ``revoker --help``).
One module per command group; importing this package registers them all on :data:`cli`.
"""

from __future__ import annotations

from revoker.cli import (
    audit,
    clients,
    events,
    inspect,
    integrity,
    jobs,
    revoke,
    services,
    tokens,
)
from revoker.cli._common import (
    EXIT_CODES,
    EXIT_DATA_LOST,
    EXIT_DUPLICATE,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REVOKED_OR_INVALID,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    cli,
    default_actor,
)

__all__ = ["EXIT_CODES", "cli", "main"]

# The command modules register themselves on import; the names keep linters from dropping them.
_COMMAND_MODULES = (audit, clients, events, inspect, integrity, jobs, revoke, services, tokens)
_EXIT_NAMES = (
    EXIT_DATA_LOST, EXIT_DUPLICATE, EXIT_JOB_FAILED, EXIT_NOT_FOUND, EXIT_OK,
    EXIT_REVOKED_OR_INVALID, EXIT_TIMEOUT, EXIT_UNAVAILABLE, EXIT_USAGE, default_actor,
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The ``revoker`` console script."""
    cli.main(args=argv, prog_name="revoker")


if __name__ == "__main__":
    main()
