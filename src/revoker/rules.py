"""The revoked-or-not decision. Pure: no I/O.

A verified token is revoked when any of these holds (``RULE_ORDER``):

1. ``jti``: its jti was revoked;
2. ``family``: its refresh family (session) was revoked;
3. ``user``: it was issued at or before its user's watermark;
4. ``tenant``: it was issued at or before its tenant's watermark;
5. ``global``: it was issued at or before the global watermark, the cut-off written when the
   denylist was found lost or rolled back (see :mod:`revoker.integrity`).

Watermarks and issue times are compared in integer microseconds. revoker issues ``iat`` with
microsecond precision, so a token issued after a revocation call returned always passes and one
issued before it never does. A foreign token with a whole-second ``iat`` issued in the same second
as a watermark counts as revoked: the error falls on the safe side.

The stored values are read by ``keys.decode_mark`` (the one rule for their times, also the Lua
scripts'); ``encode_mark`` is re-exported from ``keys`` for the callers that import it from here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from revoker.keys import decode_mark, encode_mark

__all__ = [
    "NOT_REVOKED",
    "RULE_ORDER",
    "RevocationStatus",
    "Rule",
    "decide",
    "encode_mark",
    "now_us",
    "to_us",
]

Rule = Literal["jti", "family", "user", "tenant", "global"]
#: The order of the keys the check reads (see ``KeyLayout.check_keys``) and of precedence.
RULE_ORDER: Final[tuple[Rule, ...]] = ("jti", "family", "user", "tenant", "global")


@dataclass(frozen=True, slots=True)
class RevocationStatus:
    """Whether a token is revoked and, if so, by which rule, when and why."""

    revoked: bool
    rule: Rule | None = None
    revoked_at: float | None = None  # unix seconds
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.revoked


NOT_REVOKED: Final = RevocationStatus(False)


def now_us() -> int:
    """Wall-clock time in integer microseconds: the unit of watermarks and issue times."""
    return time.time_ns() // 1000


def to_us(seconds: float) -> int:
    """Unix seconds (possibly fractional) to integer microseconds."""
    return round(seconds * 1_000_000)


def decide(
    issued_at: float,
    values: Sequence[bytes | str | None],
) -> RevocationStatus:
    """Decide from the values of ``KeyLayout.check_keys`` (None for absent keys; the global
    watermark's may be left out).

    ``issued_at`` is the token's ``iat`` in unix seconds.
    """
    jti_raw, family_raw, user_raw, tenant_raw = values[:4]
    global_raw = values[4] if len(values) > 4 else None
    if (
        jti_raw is None
        and family_raw is None
        and user_raw is None
        and tenant_raw is None
        and global_raw is None
    ):
        return NOT_REVOKED  # nothing revokes it (the common answer, before any parsing)
    if jti_raw is not None:
        at, reason = decode_mark(jti_raw)
        return RevocationStatus(True, "jti", at / 1e6 if at else None, reason)
    if family_raw is not None:
        at, reason = decode_mark(family_raw)
        return RevocationStatus(True, "family", at / 1e6 if at else None, reason)
    iat_us = to_us(issued_at)
    # The effective cut-off is the max of the watermark levels; report the level that set it.
    best: tuple[int, Rule, str | None] | None = None
    for rule, raw in (("user", user_raw), ("tenant", tenant_raw), ("global", global_raw)):
        if raw is None:
            continue
        wm, reason = decode_mark(raw)
        if best is None or wm > best[0]:
            best = (wm, rule, reason)  # type: ignore[assignment]
    if best is not None and iat_us <= best[0]:
        return RevocationStatus(True, best[1], best[0] / 1e6, best[2])
    return NOT_REVOKED
