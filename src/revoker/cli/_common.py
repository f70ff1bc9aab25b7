"""What every ``revoker`` command shares: exit codes, the root group that turns expected errors
into them, settings and stores, output, option types.

The commands live one group per module beside this one (:mod:`revoker.cli.revoke`,
:mod:`revoker.cli.jobs`, ...); each registers itself on :data:`cli` when imported.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from revoker import exceptions as exc
from revoker.settings import RevokerSettings, get_settings

if TYPE_CHECKING:
    from revoker.store import SyncRedisTokenRevocationStore

__all__ = [
    "EPILOG",
    "EXIT_CODES",
    "EXIT_DATA_LOST",
    "EXIT_DUPLICATE",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REVOKED_OR_INVALID",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "SIGNED_BUT_UNACCEPTABLE",
    "UNIX_TIME",
    "KeyId",
    "RevokerGroup",
    "UnixTime",
    "actor_option",
    "cli",
    "cli_settings",
    "cli_store",
    "default_actor",
    "describe_unavailable",
    "emit_json",
    "fail",
    "json_option",
    "unavailable_errors",
    "when",
]

EXIT_OK: Final = 0
EXIT_REVOKED_OR_INVALID: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_NOT_FOUND: Final = 4
EXIT_JOB_FAILED: Final = 5
EXIT_DUPLICATE: Final = 6
EXIT_TIMEOUT: Final = 7
EXIT_DATA_LOST: Final = 8

#: What each exit code means; the ``--help`` epilogue is built from this table.
EXIT_CODES: Final = {
    EXIT_OK: "success (check: the token is valid and not revoked)",
    EXIT_REVOKED_OR_INVALID: "check: the token is revoked or invalid",
    EXIT_USAGE: "usage error: bad option, id, time, token or configuration",
    EXIT_UNAVAILABLE: "Redis or the broker is unavailable",
    EXIT_NOT_FOUND: "not found (unknown job or client)",
    EXIT_JOB_FAILED: "the job failed (--wait, jobs watch)",
    EXIT_DUPLICATE: "an identical job is already running (its id is printed)",
    EXIT_TIMEOUT: "--timeout passed before the job finished (it keeps running)",
    EXIT_DATA_LOST: "health: the revocation data was lost or rolled back (until `revoker recover`)",
}

EPILOG: Final = "\b\nExit codes:\n" + "\n".join(
    f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()
)

#: Token errors raised only after PyJWT verified the signature: the token is genuine, merely
#: expired, not yet valid, of the other type or with unexpected claims. Such a token may still be
#: revoked by its jti; one whose signature does not verify may not.
SIGNED_BUT_UNACCEPTABLE: Final = (
    exc.TokenExpired,
    exc.TokenNotYetValid,
    exc.MissingClaim,
    exc.InvalidClaim,
    exc.WrongTokenType,
)


def fail(message: str, exit_code: int) -> NoReturn:
    """An expected failure: one line on stderr, then a documented exit code."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "Redis or the broker did not answer", from whichever client raised them."""
    import redis.exceptions

    errors: list[type[BaseException]] = [
        exc.StoreUnavailable,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        ConnectionError,
        TimeoutError,
    ]
    with contextlib.suppress(ImportError):
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    return tuple(errors)


class RevokerGroup(click.Group):
    """Turns revoker's expected errors into a message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except exc.ConfigurationError as e:
            fail(str(e), EXIT_USAGE)
        except exc.InvalidIdentifier as e:
            fail(str(e), EXIT_USAGE)
        except exc.JobNotFound as e:
            fail(str(e), EXIT_NOT_FOUND)
        except exc.DuplicateJob as e:
            click.echo(e.job_id)
            fail(str(e), EXIT_DUPLICATE)
        except unavailable_errors() as e:
            fail(describe_unavailable(e), EXIT_UNAVAILABLE)


def describe_unavailable(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, exc.StoreUnavailable):
        return text
    return f"Redis or the broker is unavailable: {type(error).__name__}: {text}"


# --- settings, stores, output -------------------------------------------------------------------


def cli_settings() -> RevokerSettings:
    return get_settings()


def cli_store() -> SyncRedisTokenRevocationStore:
    from revoker.store import get_sync_revocation_store

    return get_sync_revocation_store(cli_settings())


def default_actor() -> str:
    """Who is acting, for the audit: ``$USER@hostname``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # getuser() falls back to the password database, which a container may not have.
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class UnixTime(click.ParamType[float]):
    """A point in time: unix seconds, or ISO 8601 (a time without an offset is taken as UTC)."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                try:
                    parsed = datetime.fromisoformat(text)
                except ValueError:
                    self.fail(
                        f"{value!r} is neither unix seconds nor an ISO 8601 time "
                        "(e.g. 2026-01-31T12:00:00Z)",
                        param,
                        ctx,
                    )
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                seconds = parsed.timestamp()
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a time after 1970-01-01", param, ctx)
        return seconds


UNIX_TIME: Final = UnixTime()


class KeyId(click.ParamType[str]):
    """An id revoker can store, checked by the rule of every key so that a refusal names the
    argument (BulkRevocation applies the same rule; pydantic would word a long id its own way)."""

    name = "text"  # the metavar stays TEXT

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from revoker.keys import escape_id

        try:
            escape_id(value, self.what)
        except exc.InvalidIdentifier as e:
            self.fail(str(e), param, ctx)
        return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def actor_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--actor",
        default=default_actor,
        show_default="$USER@hostname",
        help="Who is revoking, for the audit trail.",
    )(f)


# --- the root group ---------------------------------------------------------------------------


@click.group(
    cls=RevokerGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="revoker", prog_name="revoker")
def cli() -> None:
    """Revoke JWTs across services: tokens, sessions, users, tenants.

    Configuration comes from REVOKER_* environment variables (REVOKER_REDIS_URL,
    REVOKER_BROKER_URL, REVOKER_KEY_PREFIX, REVOKER_JWT_SECRET, ...).
    """
