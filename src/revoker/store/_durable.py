"""The durability step of a revocation plan, and the durability probe of health (both stores).

:func:`with_durability` appends ``REVOKER_DURABILITY``'s wait (WAITAOF or WAIT) to a plan's
pipeline, so it runs on the connection that sent the plan's own writes, after them, in the same
round trip.
WAIT and WAITAOF cover the writes *their* connection made: a plan's script calls (sent first, on
a pooled connection) are covered because the pipeline's own writes (every revocation plan writes
its audit entry and counter there) come after them in the replication stream and the AOF.

:func:`probe` lists what health asks the server, and :func:`judge` reads the answers.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

from revoker.durability import Durability, assess
from revoker.exceptions import StoreUnavailable
from revoker.store._base import Plan, ScriptCall

__all__ = ["PROBE", "judge", "unavailable", "with_durability"]

T = TypeVar("T")

#: What health asks (each command on its own: CONFIG may be refused, WAITAOF unknown).
PROBE: Final[tuple[tuple[Any, ...], ...]] = (
    ("INFO", "server"),
    ("INFO", "replication"),
    ("INFO", "persistence"),
    ("WAITAOF", 0, 0, 1),
    ("CONFIG", "GET", "appendfsync"),
)


def with_durability(plan: Plan[T], policy: Durability, timeout: float) -> Plan[T]:
    """``plan`` with the wait of ``policy`` appended (the plan itself when there is none)."""
    command = policy.wait_command(timeout)
    if command is None:
        return plan
    if not any(not isinstance(c, ScriptCall) for c in plan.commands):
        # The wait would run alone, on whichever pooled connection: it would cover nothing.
        raise ValueError("a durable plan needs a plain write in its pipeline (see store._durable)")

    def finish(replies: list[Any]) -> T:
        policy.check(replies[-1], timeout)
        return plan.finish(replies[:-1])

    # After the EXEC of an atomic plan (a wait inside a MULTI would not wait).
    return Plan([*plan.commands, command], finish, plan.atomic, plan.after_exec + 1)


def unavailable(error: BaseException, policy: Durability | None) -> StoreUnavailable:
    """The StoreUnavailable of a failed plan; of a durable one, saying what its wait's error
    means when it is about the wait (a server without WAITAOF, an AOF turned off)."""
    if policy is not None:
        explained = policy.explain_error(error)
        if explained is not None:
            return explained
        return StoreUnavailable(
            f"Redis is unavailable: {type(error).__name__}: {error} (the revocation may have "
            "been written, but it is not acknowledged as durable)"
        )
    return StoreUnavailable(f"Redis is unavailable: {type(error).__name__}: {error}")


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def judge(policy: Durability, answers: list[Any]) -> dict[str, Any]:
    """Health's durability entry from the answers (a reply or an exception each) to PROBE."""
    if policy.enabled and all(isinstance(a, BaseException) for a in answers[:3]):
        error = answers[0]
        return {
            "mode": str(policy),
            "honoured": False,
            "detail": f"cannot ask the server: {type(error).__name__}: {error}",
        }
    info: dict[str, Any] = {}
    for answer in answers[:3]:
        if isinstance(answer, dict):
            info.update({_text(k): _text(v) for k, v in answer.items()})
    waitaof, config = answers[3], answers[4]
    appendfsync: str | BaseException | None
    if isinstance(config, BaseException):
        appendfsync = config
    elif isinstance(config, dict):  # redis-py parses CONFIG GET into a dict
        appendfsync = _text(config.get("appendfsync") or config.get(b"appendfsync"))
    elif isinstance(config, list | tuple) and len(config) >= 2:
        appendfsync = _text(config[1])
    else:
        appendfsync = None
    return assess(policy, info=info, waitaof=waitaof, appendfsync=appendfsync)
