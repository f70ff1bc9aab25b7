"""Durable acknowledgements (``REVOKER_DURABILITY``): when a revocation call may return.

* ``none`` (the default): once Redis has the write in memory. A power loss (or a failover to a
  replica that had not received it) can undo an acknowledged revocation: with
  ``appendfsync everysec`` the last second or so of writes.
* ``fsync``: once the write is in the server's AOF on disk. Each revocation ends with
  ``WAITAOF 1 0 <timeout>`` in its round trip. WAITAOF is a barrier only when the server runs
  ``appendonly yes`` with ``appendfsync always``: under ``everysec`` it answers before the fsync
  (measured with a power-loss harness; redis/redis#13793). The health check reads
  ``appendfsync`` (``CONFIG GET``, where the server allows it) and reports the mode not honoured
  otherwise. A server without WAITAOF (Redis < 7.2) is refused, not worked around: every durable
  write fails with :class:`~revoker.exceptions.DurabilityNotReached` and health says why.
* ``replicas:N``: once N replicas have the write (``WAIT N <timeout>``).

A write whose wait falls short within ``REVOKER_DURABILITY_TIMEOUT`` has still happened: the call
raises :class:`~revoker.exceptions.DurabilityNotReached` (a
:class:`~revoker.exceptions.StoreUnavailable`) saying so, and a bulk-job chunk is retried rather
than counted done. Revocations are idempotent: retrying one is the way out.

This module is pure (no I/O): parsing the setting, the wait command, reading its reply, and
judging what a server reports about itself (:func:`assess`). The stores run the commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from revoker.exceptions import DurabilityNotReached

__all__ = ["DURABILITY_MODES", "Durability", "assess", "parse_durability"]

DurabilityMode = Literal["none", "fsync", "replicas"]
DURABILITY_MODES: Final = ("none", "fsync", "replicas:N")

_SETTING: Final = "REVOKER_DURABILITY"
_TIMEOUT_SETTING: Final = "REVOKER_DURABILITY_TIMEOUT"


@dataclass(frozen=True, slots=True)
class Durability:
    """A parsed ``REVOKER_DURABILITY``: the mode, and N for ``replicas:N``."""

    mode: DurabilityMode = "none"
    replicas: int = 0

    def __str__(self) -> str:
        return f"replicas:{self.replicas}" if self.mode == "replicas" else self.mode

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def wait_command(self, timeout: float) -> tuple[Any, ...] | None:
        """The command that makes the preceding writes of a connection durable, or None.

        ``timeout`` in seconds; Redis takes milliseconds, and 0 would mean "wait for ever".
        """
        ms = max(1, round(timeout * 1000))
        if self.mode == "fsync":
            return ("WAITAOF", 1, 0, ms)
        if self.mode == "replicas":
            return ("WAIT", self.replicas, ms)
        return None

    def check(self, reply: Any, timeout: float) -> None:
        """Raise DurabilityNotReached unless ``reply`` (of :meth:`wait_command`) reached it."""
        if self.mode == "fsync":
            local = int(reply[0])
            if local < 1:
                raise DurabilityNotReached(
                    "the revocation was written but is not acknowledged as durable: the server "
                    f"did not fsync it to its AOF within {timeout:g} s (WAITAOF; "
                    f"{_SETTING}=fsync, {_TIMEOUT_SETTING}); retry it"
                )
        elif self.mode == "replicas":
            reached = int(reply)
            if reached < self.replicas:
                raise DurabilityNotReached(
                    "the revocation was written but is not acknowledged as durable: "
                    f"{reached} of {self.replicas} replicas confirmed it within {timeout:g} s "
                    f"(WAIT; {_SETTING}={self}, {_TIMEOUT_SETTING}); retry it"
                )

    def explain_error(self, error: BaseException) -> DurabilityNotReached | None:
        """What a server's error reply to :meth:`wait_command` means, if it is about it."""
        text = str(error)
        if self.mode == "fsync" and "WAITAOF" in text and "unknown command" in text:
            return DurabilityNotReached(
                f"the revocation was written but cannot be acknowledged as durable: {_SETTING}"
                "=fsync needs WAITAOF (Redis >= 7.2 or Valkey), which this server does not "
                "have; upgrade it or use replicas:N"
            )
        if self.mode == "fsync" and "appendonly is disabled" in text:
            return DurabilityNotReached(
                f"the revocation was written but cannot be acknowledged as durable: {_SETTING}"
                "=fsync needs the server to run appendonly yes (with appendfsync always)"
            )
        return None


def parse_durability(text: str) -> Durability:
    """``none``, ``fsync`` or ``replicas:N`` (N >= 1); ValueError naming the choices otherwise."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if value in ("none", "fsync"):
        return Durability(value)  # type: ignore[arg-type]  # narrowed by the test above
    name, sep, count = value.partition(":")
    if name == "replicas" and sep and count.isdigit() and int(count) >= 1:
        return Durability("replicas", int(count))
    raise ValueError(
        f"must be none, fsync or replicas:N with N >= 1 (a number of replicas), not {text!r}"
    )


def _info_int(info: Mapping[str, Any], name: str) -> int:
    try:
        return int(info.get(name, 0))
    except (TypeError, ValueError):
        return 0


#: A replica whose last acknowledgement is older than this (INFO's ``lag``, whole seconds; a
#: healthy one acknowledges every second) is not counted as able to confirm a WAIT.
MAX_REPLICA_LAG: Final = 2


def _acknowledging(info: Mapping[str, Any]) -> int:
    """Replicas of INFO replication that are online and acknowledged within MAX_REPLICA_LAG."""
    count = 0
    for name, entry in info.items():
        if not (str(name).startswith("slave") and str(name)[5:].isdigit()):
            continue
        if isinstance(entry, str):  # "ip=...,port=...,state=online,offset=...,lag=0" unparsed
            entry = dict(part.split("=", 1) for part in entry.split(",") if "=" in part)
        if not isinstance(entry, Mapping) or entry.get("state") != "online":
            continue
        if _info_int(entry, "lag") <= MAX_REPLICA_LAG:
            count += 1
    return count


def assess(
    policy: Durability,
    *,
    info: Mapping[str, Any],
    waitaof: Any,
    appendfsync: str | BaseException | None,
) -> dict[str, Any]:
    """Whether the server can honour ``policy``, from what it reports about itself.

    ``info``: INFO server, replication and persistence fields; ``waitaof``: the reply (or the
    error) of ``WAITAOF 0 0 1``; ``appendfsync``: ``CONFIG GET appendfsync``'s value, or the
    error of a server that refuses CONFIG. Returns ``{"mode", "honoured", "detail"}`` and the
    facts it judged by.
    """
    server = (
        f"valkey {info['valkey_version']}"
        if "valkey_version" in info
        else f"redis {info.get('redis_version', '?')}"
    )
    facts: dict[str, Any] = {"server": server} if info else {}
    if policy.mode == "none":
        return {
            "mode": "none",
            "honoured": True,
            "detail": "nothing asked: a revocation is acknowledged once it is in Redis's memory",
            **facts,
        }
    if policy.mode == "replicas":
        connected = _info_int(info, "connected_slaves")
        online = _acknowledging(info)
        facts.update(role=info.get("role"), replicas_connected=connected, replicas_acking=online)
        if info.get("role") not in (None, "master"):
            ok, detail = False, f"this server is a {info.get('role')}, not a primary"
        elif online < policy.replicas:
            ok = False
            detail = (
                f"{online} of {policy.replicas} replicas online and acknowledging (of "
                f"{connected} connected): revocations are refused (not acknowledged as durable) "
                "until enough are"
            )
        else:
            ok = True
            detail = (
                f"WAIT {policy.replicas} after each revocation; {online} replicas acknowledging"
            )
        return {"mode": str(policy), "honoured": ok, "detail": detail, **facts}
    # fsync
    has_waitaof = not (isinstance(waitaof, BaseException) and "unknown command" in str(waitaof))
    aof = _info_int(info, "aof_enabled") == 1
    fsync = None if isinstance(appendfsync, BaseException) else appendfsync
    facts.update(waitaof=has_waitaof, appendonly=aof, appendfsync=fsync)
    problem: str | None = None
    if not has_waitaof:
        problem = (
            f"{server} has no WAITAOF (Redis >= 7.2 and Valkey have it): revocations are "
            "refused; upgrade the server or use replicas:N"
        )
    elif not aof:
        problem = "appendonly is off: nothing reaches the disk; set appendonly yes"
    elif fsync is None:
        problem = (
            f"cannot read appendfsync (CONFIG GET refused: {appendfsync}): WAITAOF is an fsync "
            "barrier only under appendfsync always; check the server's setting"
        )
    elif fsync != "always":
        problem = (
            f"appendfsync is {fsync}: WAITAOF then answers before the fsync, so a power loss "
            "can undo acknowledged revocations; set appendfsync always"
        )
    return {
        "mode": "fsync",
        "honoured": problem is None,
        "detail": problem
        or "WAITAOF 1 0 after each revocation; appendonly yes, appendfsync always",
        **facts,
    }
