"""The denylist's identity, and how a process tells that it was lost or rolled back. Pure: no I/O.

The data carries an identity in ``P:{integrity}:id`` (:meth:`revoker.keys.KeyLayout.integrity`):

* ``epoch``: a random id with no TTL. It is created by ``revoker init``, or by the first write of
  revocation state (every such write does ``HSETNX epoch`` in its atomic step);
* ``seq``: the revocation sequence. Every write of revocation state (a jti or family, a watermark,
  a rotation's reuse mark, a cut-off, a recovery) bumps it in the same atomic step, and a job
  chunk's marks are followed by a bump in the same pipeline (applied in that order by Redis, its
  AOF and its replicas: a state shows no bump without the marks before it), so it only grows
  while the data lives;
* ``state``: empty while nothing was lost; ``cutoff``, ``fail-closed`` or ``accepted`` once a loss
  was handled by that ``REVOKER_ON_DATA_LOSS`` policy; ``recovered`` after ``revoker recover``.
  ``lost`` names the epoch the detecting process had seen, ``from`` the one it replaced.

The per-request check reads ``epoch``, ``seq``, ``state``, ``lost`` and ``from`` in its one round
trip, and each process (each store) remembers the epoch and the highest ``seq`` it has seen
(:class:`IntegrityWatch`). It is a **loss** when:

* ``wiped``: the epoch is missing though this process saw one (or ``REVOKER_REQUIRE_INIT`` says
  one must exist);
* ``epoch_changed``: the epoch differs from the one this process saw, and the new one is not the
  record of a loss or recovery this process can place (its ``lost`` or ``from`` is the epoch this
  process saw): a wipe followed by a revocation that created a new epoch;
* ``rolled_back``: the same epoch with a ``seq`` lower than one this process had seen before it
  sent the check (an older backup, a replica that had not received the latest writes). A corrupt
  ``seq`` (unreadable by :func:`revoker.keys.read_seq`: not ASCII digits, or above
  ``keys.MAX_TIME``) reads 0, so it is one too: never an error that would send the check to the
  failure policy.

**A new deployment and a wiped one.** A process that has never seen an epoch cannot tell an empty
Redis of a new deployment from a wiped one by itself. The rule: without ``REVOKER_REQUIRE_INIT``,
a process that has seen no epoch takes "no epoch" for a new deployment (nothing was ever revoked:
any revocation would have created one); from its first sight of an epoch on, its absence is
always a loss. With ``REVOKER_REQUIRE_INIT=true`` (set it once ``revoker init`` has run) a missing
epoch is a loss even to a process that just started, so a wipe is caught even when every process
restarted with it. Left uncovered without it: a wipe that every process restarted through, with no
revocation since.

The sequence is compared only within one epoch, and only against what was seen *before* the check
was sent, so concurrent checks whose replies arrive out of order are never taken for a rollback. A
rollback followed by more new revocations than it lost, before a process checks again, is not seen.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

from revoker.keys import MAX_TIME, decode_seq

__all__ = [
    "HANDLED_STATES",
    "INTEGRITY_FIELDS",
    "IntegrityWatch",
    "Loss",
    "LossKind",
    "Observation",
    "new_epoch",
    "read_observation",
]

#: The hash fields the check reads, in the order check.lua returns them.
INTEGRITY_FIELDS: Final = ("epoch", "seq", "state", "lost", "from")
#: States that record a loss handled by a policy (awaiting ``revoker recover``).
HANDLED_STATES: Final = frozenset({"cutoff", "fail-closed", "accepted"})
#: Digits the fast path reads itself; a longer ``seq`` is judged by keys.read_seq (bounded).
_SEQ_DIGITS: Final = len(str(MAX_TIME)) - 1
#: The state ``revoker recover`` leaves.
RECOVERED: Final = "recovered"

LossKind = Literal["wiped", "epoch_changed", "rolled_back"]


def new_epoch() -> str:
    """A fresh random epoch id."""
    return secrets.token_hex(8)


def _text(value: Any) -> str | None:
    if value is None or value is False:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text or None


@dataclass(frozen=True, slots=True)
class Observation:
    """What one read of the integrity hash found."""

    epoch: str | None
    seq: int
    state: str | None = None
    lost: str | None = None
    replaced: str | None = None  # the hash field ``from``


def read_observation(raw: Any) -> Observation:
    """The check's reply for the integrity hash (its ``INTEGRITY_FIELDS``, absent ones None)."""
    if not raw:
        return Observation(None, 0)
    epoch, seq, state, lost, replaced = (list(raw) + [None] * 5)[:5]
    return Observation(
        _text(epoch),
        decode_seq(seq if seq is not False else None),
        _text(state),
        _text(lost),
        _text(replaced),
    )


@dataclass(frozen=True, slots=True)
class Loss:
    """A loss or rollback a check found: what it saw, and what this process had seen."""

    kind: LossKind
    observed: Observation
    seen_epoch: str | None
    seen_seq: int

    def describe(self) -> str:
        if self.kind == "wiped":
            return (
                f"the denylist's epoch {self.seen_epoch or '(required)'} is gone: Redis was wiped"
            )
        if self.kind == "epoch_changed":
            return (
                f"the denylist's epoch changed from {self.seen_epoch} to {self.observed.epoch}: "
                "Redis was wiped and written again"
            )
        return (
            f"the revocation sequence went back from {self.seen_seq} to {self.observed.seq} "
            f"(epoch {self.observed.epoch}): Redis was rolled back or failed over to a stale "
            "replica"
        )


class IntegrityWatch:
    """The epoch and highest sequence one process (one store) has seen.

    :meth:`snapshot` before sending a check, :meth:`observe` its reply. Cheap: a tuple read, a
    string comparison and an integer comparison per check.
    """

    __slots__ = ("_epoch_raw", "_observed", "_state_raw", "epoch", "require_init", "seq")

    def __init__(self, *, require_init: bool = False) -> None:
        self.require_init = require_init
        self.epoch: str | None = None
        self.seq = 0
        # The last identity adopted, as the check's reply spells it (for :meth:`quick`).
        self._observed = Observation(None, 0)
        self._epoch_raw: bytes | None = None
        self._state_raw: bytes | None = None

    def snapshot(self) -> tuple[str | None, int]:
        """What was seen before a check is sent (compare its reply against this)."""
        return self.epoch, self.seq

    def adopt(self, observed: Observation) -> None:
        """Take ``observed`` as the current identity (after a loss was handled, or a recovery)."""
        self.epoch, self.seq = observed.epoch, observed.seq
        self._observed = observed
        self._epoch_raw = observed.epoch.encode() if observed.epoch is not None else None
        self._state_raw = observed.state.encode() if observed.state is not None else None

    def quick(self, raw: Any, snapshot: tuple[str | None, int]) -> Observation | None:
        """The per-request fast path: the identity this process knows, unchanged (same epoch and
        state bytes, a sequence not below the snapshot's), or None to judge it in full
        (:func:`read_observation`, :meth:`observe`). A bytes comparison and an int()."""
        epoch_raw = self._epoch_raw
        if (
            epoch_raw is None
            or not raw
            or raw[0] != epoch_raw
            or raw[2] != self._state_raw
            or snapshot[0] != self.epoch
        ):
            return None
        seq_raw = raw[1]
        if not isinstance(seq_raw, bytes) or not seq_raw.isdigit() or len(seq_raw) > _SEQ_DIGITS:
            return None  # judged in full, by keys.read_seq's rule
        seq = int(seq_raw)
        if seq < snapshot[1]:
            return None
        if seq > self.seq:
            self.seq = seq
        return self._observed

    def observe(self, observed: Observation, snapshot: tuple[str | None, int]) -> Loss | None:
        """Remember ``observed``; a :class:`Loss` when it shows the data lost or rolled back."""
        seen_epoch, seen_seq = snapshot
        epoch = observed.epoch
        if epoch is not None and epoch == seen_epoch:
            if observed.seq < seen_seq:
                return Loss("rolled_back", observed, seen_epoch, seen_seq)
            if observed.seq > self.seq and self.epoch == epoch:
                self.seq = observed.seq
            return None
        if epoch is None:
            if seen_epoch is None and not self.require_init:
                return None  # a new deployment (see the module docstring)
            return Loss("wiped", observed, seen_epoch, seen_seq)
        if seen_epoch is None:
            if self.epoch is not None and self.epoch != epoch:
                # Another check of this process adopted an epoch meanwhile: judge against that.
                return self.observe(observed, self.snapshot())
            self.adopt(observed)  # first sight (a handled state is reported by health)
            return None
        if (observed.state in HANDLED_STATES or observed.state == RECOVERED) and seen_epoch in (
            observed.lost,
            observed.replaced,
        ):
            self.adopt(observed)  # the loss this process saw, handled elsewhere, or a recovery
            return None
        if self.epoch == epoch:
            return None  # adopted by a concurrent check of this process since the snapshot
        return Loss("epoch_changed", observed, seen_epoch, seen_seq)
