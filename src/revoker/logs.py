"""revoker's log lines: one handler on the ``revoker`` logger, text or JSON.

``REVOKER_LOG_FORMAT=json|text`` and ``REVOKER_LOG_LEVEL`` are applied by
:func:`configure_logging`, which the Celery worker (its main process and every pool child), the
admin API served by ``revoker api`` (uvicorn's own lines included), the CLI (for the length of a
command: :func:`command_logging`) and, when ``REVOKER_LOG_MIDDLEWARE`` is set, the middleware and
the FastAPI dependency call. ``create_app`` alone configures nothing: an app that mounts the
admin API keeps its logging. Only the ``revoker`` logger tree is touched, never the root
logger: a service's own logging stays as it is. With the handler installed, revoker's records do
not also propagate to the root (no line twice).

The documented lines (``event`` is a field of every JSON line that has one):

* ``revocation`` (logger ``revoker.revocations``, INFO): one per revocation written, with
  ``kind``, ``surface``, ``count``, ``target`` (a jti, family, user, tenant or job id), ``tenant``,
  ``actor``, ``reason`` (:func:`revoker.metrics.count_revocation`).
* ``rejected`` (logger ``revoker.dependencies``, INFO) and ``revoked token rejected`` (logger
  ``revoker.middleware``, INFO): one per refused request, with the RFC 6750 ``error``, the
  ``rule`` that revoked it, ``jti``, ``sub``, ``tenant``, ``path``.
* ``job_finished`` (logger ``revoker.tasks``, INFO): a job's end, with its counts.

A token itself is never logged: only ids and claims a log may hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings

__all__ = ["HANDLER_NAME", "TEXT_FORMAT", "JsonFormatter", "command_logging", "configure_logging"]

#: The name of the handler :func:`configure_logging` installs (replaced, never duplicated).
HANDLER_NAME: Final = "revoker"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, and
    every field given with ``extra=`` (values JSON cannot hold are written as text)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    settings: RevokerSettings | None = None,
    *,
    default_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO",
    stream: IO[str] | None = None,
    also: tuple[str, ...] = (),
) -> logging.Handler:
    """Install (or replace) revoker's handler on the ``revoker`` logger; returns it.

    The level is ``REVOKER_LOG_LEVEL``, or ``default_level`` when unset (the CLI passes WARNING
    so that a command's output is not interleaved with INFO lines). ``stream``: where lines go
    (default: standard error, looked up at each line so a redirected ``sys.stderr`` is followed).
    ``also``: other loggers given the same handler and level (``revoker api`` passes uvicorn's,
    so its access and error lines share the format).
    """
    if settings is None:
        from revoker.settings import get_settings

        settings = get_settings()
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    for name in ("revoker", *also):
        target = logging.getLogger(name)
        for old in [h for h in target.handlers if h.get_name() == HANDLER_NAME]:
            target.removeHandler(old)
        target.addHandler(handler)
        target.setLevel(settings.log_level or default_level)
        target.propagate = False
    return handler


@contextlib.contextmanager
def command_logging(settings: RevokerSettings | None) -> Iterator[logging.Handler | None]:
    """revoker's handler for the length of one CLI command, then the ``revoker`` logger as it
    was: the CLI also runs inside other Python processes (scripts calling ``cli.main``, tests),
    whose logging must not be changed by it. Lines go to standard error; the level is
    ``REVOKER_LOG_LEVEL`` or WARNING, so a command's output is not interleaved with INFO lines.
    None (the settings did not load): nothing is changed."""
    if settings is None:
        yield None
        return
    logger = logging.getLogger("revoker")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    handler = configure_logging(settings, default_level="WARNING")
    try:
        yield handler
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


class _StderrHandler(logging.StreamHandler[IO[str]]):
    """A StreamHandler on whatever ``sys.stderr`` is when a line is written (click's and
    pytest's capture replace it; Celery's redirect is skipped: its original stream is used)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        current = sys.stderr
        # Celery replaces sys.stderr in pool children by a proxy that logs what is written to
        # it: writing there would log each line a second time, through Celery's format.
        if type(current).__name__ == "LoggingProxy":
            return sys.__stderr__ or current
        return current

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass
