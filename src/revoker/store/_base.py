"""What the sync and async stores share: every command they send, and what replies mean.

A store method is a *plan*: the Redis commands to send (pipelined in one round trip) and a
function that turns the replies into the result. :class:`StoreCore` builds plans and does no I/O;
the sync and async stores only execute them. Lua scripts are package data, loaded by both.

Every write of revocation state goes with a bump of the denylist's sequence in the same atomic
step (see :mod:`revoker.integrity`), built in one place: :meth:`StoreCore.sequenced` for plain
commands (run as one MULTI/EXEC: ``Plan.atomic``), :meth:`StoreCore.script_sequence` for the
scripts that write; a job chunk's marks are followed by :meth:`StoreCore.sequence_bump` in the
same pipeline instead (``tasks.buckets.revoke_buckets`` says why).

The change feed (``keys.py``, "The change feed") is appended in the same places, so no write can
reach Redis without its entry: :meth:`StoreCore.sequenced` makes the write, the bump and the
entry one ``EVAL`` of ``scripts/sequenced.lua`` (the entry carries the sequence the bump gave);
the scripts that write call the same Lua (``scripts/_sequence.lua``, prepended to them by
:func:`load_script`); a bulk chunk's pipeline starts with :meth:`StoreCore.feed_command`, before
its marks. On a Redis Cluster no feed is written (the integrity slot, the tenants' slots and the
feed could share no atomic step): the reads of the feed refuse to run there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import unquote

from redis.crc import key_slot
from redis.exceptions import RedisError

from revoker import keys as k
from revoker.exceptions import InvalidIdentifier
from revoker.health import probe_result
from revoker.integrity import (
    IntegrityWatch,
    Loss,
    Observation,
    new_epoch,
    read_observation,
)
from revoker.metrics import DENYLIST_LOST, count_revocation
from revoker.rules import RevocationStatus, decide, now_us, to_us
from revoker.settings import RevokerSettings
from revoker.tokens import TokenData

T = TypeVar("T")

logger = logging.getLogger("revoker.integrity")

__all__ = [
    "BACKEND_ERRORS",
    "BUMP_EVAL",
    "FEED_ON_CLUSTER",
    "SEQUENCED_EVAL",
    "SEQUENCED_SCRIPTS",
    "Command",
    "NewSession",
    "Plan",
    "Rotation",
    "RotationReply",
    "ScriptCall",
    "SessionRecord",
    "StoreCore",
    "atomic_pipeline",
    "load_script",
]

Command = tuple[Any, ...]

#: Errors that mean "the store cannot answer" (wrapped as StoreUnavailable). redis-py raises its
#: own ConnectionError/TimeoutError, but a dead socket can surface as a bare OSError.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


#: The scripts that write revocation state: :func:`load_script` prepends ``_sequence.lua`` (the
#: sequence bump and the feed entry) to each.
SEQUENCED_SCRIPTS = frozenset({"set_watermark", "rotate_refresh", "data_loss", "sequenced", "init"})


def _script_file(name: str) -> str:
    return resources.files("revoker.scripts").joinpath(f"{name}.lua").read_text()


def load_script(name: str) -> str:
    """The source of ``revoker/scripts/<name>.lua`` (after ``_sequence.lua`` for the scripts that
    write revocation state)."""
    if name in SEQUENCED_SCRIPTS:
        return _script_file("_sequence") + _script_file(name)
    return _script_file(name)


def _minified(source: str) -> str:
    """A script without its comment lines and indentation: what StoreCore.sequenced sends with
    every write (EVAL sends the source each time; Redis hashes what it is sent)."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


#: The EVAL body of :meth:`StoreCore.sequenced` (``scripts/sequenced.lua`` and its prelude).
SEQUENCED_EVAL = _minified(load_script("sequenced"))
#: The EVAL body of :meth:`StoreCore.sequence_bump` (``scripts/sequence_bump.lua`` after
#: ``_sequence.lua``, whose ``revoker_seq`` is keys.read_seq's rule).
BUMP_EVAL = _minified(_script_file("_sequence") + _script_file("sequence_bump"))

#: Why the feed cannot be read (or written) on a Redis Cluster; the configuration error of
#: whatever needs it there (the mirror check mode refuses a cluster with it).
FEED_ON_CLUSTER = (
    "the change feed is not written on a Redis Cluster (REVOKER_REDIS_CLUSTER): no atomic step "
    "can span a tenant's slot, the integrity slot and the feed; use a single Redis (with "
    "replicas or Sentinel) for the mirror"
)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """A Lua script call inside a plan (run by the store's registered Script object)."""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(slots=True)
class Plan(Generic[T]):
    """Commands to send in one pipeline, and how to read their replies.

    ``atomic``: the plain commands run as one MULTI/EXEC (a write of revocation state and its
    sequence bump, :meth:`StoreCore.sequenced`), except the last ``after_exec`` of them, sent
    after the EXEC in the same pipeline (REVOKER_DURABILITY's WAIT or WAITAOF: inside a MULTI
    they would not wait). On a Redis Cluster, whose transactions cannot span slots, they are
    sent as an ordinary pipeline.
    """

    commands: list[Command | ScriptCall]
    finish: Callable[[list[Any]], T]
    atomic: bool = False
    after_exec: int = 0


def atomic_pipeline(
    commands: Sequence[Command], after_exec: int
) -> tuple[list[Command], Callable[[list[Any]], list[Any]]]:
    """``commands`` as MULTI ... EXEC followed by their last ``after_exec``, and how to turn the
    pipeline's replies back into one reply per command (EXEC's replies are the raw ones)."""
    inside = len(commands) - after_exec
    wrapped = [("MULTI",), *commands[:inside], ("EXEC",), *commands[inside:]]

    def unwrap(replies: list[Any]) -> list[Any]:
        executed = replies[inside + 1]
        if not isinstance(executed, list | tuple):
            raise RedisError(f"transaction not executed: {executed!r}")
        for reply in executed:
            if isinstance(reply, BaseException):
                raise reply
        return [*executed, *replies[inside + 2 :]]

    return wrapped, unwrap


class NewSession(TypedDict):
    """What ``record_session`` records of a new family, spelled once for the plan and both
    stores (keyword arguments, every one required; see :func:`revoker.start_session`)."""

    user_id: str
    tenant_id: str | None
    client_id: str | None
    scopes: Sequence[str]
    current_jti: str
    created: float
    expires: int


class Rotation(TypedDict):
    """The successor pair a rotation makes current (``rotate_refresh``): spelled once for the
    plan and both stores (keyword arguments, every one required; see :mod:`revoker.refresh`)."""

    refresh_jti: str
    access_jti: str
    issued_at_us: int
    expires_at: int
    reuse_mark: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a session record holds, decoded (see ``keys.RECORD_FIELDS``)."""

    family_id: str
    user_id: str
    tenant_id: str | None
    client_id: str | None
    created: float
    expires: int
    current_jti: str | None
    scopes: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    # Stored bytes that are not UTF-8 (a corrupt identity hash) read as text, never an error:
    # keys' parsers then judge them.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _time(text: str) -> int | None:
    """A decoded record field's time by ``keys.read_time``."""
    return k.read_time(text.encode(errors="replace"))


@dataclass(frozen=True, slots=True)
class RotationReply:
    """What the rotate_refresh script decided (see ``scripts/rotate_refresh.lua``).

    ``outcome`` is "rotated", "grace" (with the successor to re-sign), "reuse" (the family was
    revoked by this call), "unknown", or "revoked" (with the status; nothing was written).
    """

    outcome: str
    access_jti: str | None = None
    refresh_jti: str | None = None
    issued_at_us: int | None = None
    status: RevocationStatus | None = None


#: Family hash fields the rotate_refresh script reads or writes, in its ARGV order.


class StoreCore:
    """Key layout, TTL arithmetic and reply parsing for both stores."""

    SCRIPTS: tuple[str, ...] = ("set_watermark", "rotate_refresh", "check", "data_loss", "init")

    def __init__(self, settings: RevokerSettings) -> None:
        self.settings = settings
        self.keys = k.KeyLayout(settings.key_prefix)
        self.lifetimes = k.Lifetimes.from_settings(settings)
        #: Set by the store: a Redis Cluster, where no atomic step spans the integrity slot.
        self.cluster = False
        #: The epoch and highest sequence this store has seen (see revoker.integrity).
        self.watch = IntegrityWatch(require_init=settings.require_init)
        #: The last loss logged and counted: concurrent checks seeing one loss report it once.
        self._reported: tuple[str, str | None, str | None] | None = None
        #: The last loss audited (plan_loss_audit): once per loss and store, as it is logged.
        self._audited: tuple[str, str | None, str | None] | None = None

    # --- the denylist's identity -----------------------------------------------------------------

    def sequence_bump(self, count: int = 1) -> list[Command]:
        """The sequence bump of a write of revocation state (creating the epoch if absent), as
        one plain command: an EVAL of ``scripts/sequence_bump.lua``, which reads the stored
        value by keys.read_seq's rule, so a corrupt one (read 0) never fails the write."""
        return [("EVAL", BUMP_EVAL, 1, self.keys.integrity, new_epoch(), count)]

    def sequenced(self, writes: Sequence[Command], entry: dict[str, str]) -> list[Command]:
        """A write of revocation state, its sequence bump and its feed ``entry``
        (:meth:`feed_entry`): the one builder of the three, as commands that begin an atomic
        plan (``Plan(..., atomic=True)``); read the writes' replies with :meth:`written`.

        On a single Redis: one EVAL of ``scripts/sequenced.lua``, which runs the writes, then
        the bump and the entry (a failing write stops it before either). On a cluster, where
        the integrity hash is in another slot: the writes and the bump (no feed there)."""
        if self.cluster:
            return [*writes, *self.sequence_bump()]
        encoded: list[Any] = [len(writes)]
        for write in writes:
            encoded += [len(write), *write]
        return [
            (
                "EVAL",
                SEQUENCED_EVAL,
                2,
                self.keys.integrity,
                self.keys.feed,
                new_epoch(),
                *self.feed_args(entry),
                *encoded,
            )
        ]

    def written(self, replies: Sequence[Any], count: int) -> list[Any]:
        """The replies of the ``count`` writes a :meth:`sequenced` list began with."""
        if self.cluster:
            return list(replies[:count])
        return list(replies[0][:count])

    def script_sequence(self, entry: dict[str, str]) -> tuple[list[str], list[str], list[Command]]:
        """For a script that writes revocation state: the keys (integrity hash, feed) and args
        (epoch, :meth:`feed_args` of ``entry``) that let it bump the sequence and append its
        feed entry in its own step (``scripts/_sequence.lua``), or on a cluster (the integrity
        hash lives in another slot) none, and the bump as plain commands sent beside it instead
        (not atomic there; no feed)."""
        if self.cluster:
            return [], [], self.sequence_bump()
        return [self.keys.integrity, self.keys.feed], [new_epoch(), *self.feed_args(entry)], []

    # --- the change feed (keys.py, "The change feed") -------------------------------------------

    def feed_entry(
        self,
        kind: str,
        *,
        at_us: int,
        tenant_id: str | None = None,
        ids: Iterable[str] = (),
        expires_at: float | None = None,
        escaped: bool = False,
    ) -> dict[str, str]:
        """The feed entry of a write made at ``at_us`` (its ``v``, and the base of its ``x`` by
        ``Lifetimes.feed_expiry``); ``s`` is filled in by the step that bumps the sequence."""
        return k.encode_feed_entry(
            kind,
            tenant_id=tenant_id,
            ids=ids,
            value_us=at_us,
            expires=self.lifetimes.feed_expiry(kind, at_us / 1e6, expires_at),
            escaped=escaped,
        )

    def feed_args(self, entry: dict[str, str]) -> list[str]:
        """What ``scripts/_sequence.lua`` reads after the epoch: the trim point and the entry."""
        return [
            self.lifetimes.feed_cutoff_id(time.time()),
            entry["k"],
            entry["t"],
            entry["i"],
            entry["v"],
            entry["x"],
        ]

    def feed_command(self, entry: dict[str, str]) -> list[Command]:
        """The plain XADD of ``entry`` (a step that bumps no sequence in it: ``s`` as given), or
        nothing on a cluster. A bulk chunk sends it before its marks (tasks.buckets)."""
        if self.cluster:
            return []
        fields = [x for pair in entry.items() for x in pair]
        cutoff = self.lifetimes.feed_cutoff_id(time.time())
        return [("XADD", self.keys.feed, "MINID", "~", cutoff, "*", *fields)]

    def integrity_values(self, raw: Any, snapshot: tuple[str | None, int]) -> Loss | Observation:
        """The check's reply for the integrity hash, judged against ``snapshot`` (what this store
        had seen when the check was sent): a Loss, or the Observation when nothing was lost."""
        known = self.watch.quick(raw, snapshot)
        if known is not None:
            return known
        observed = read_observation(raw)
        loss = self.watch.observe(observed, snapshot)
        return observed if loss is None else loss

    def plan_data_loss(self, loss: Loss) -> Plan[tuple[Observation, Any]]:
        """Handle ``loss`` by the configured policy, once for every process (data_loss.lua):
        the identity afterwards and the global watermark. Loud: ERROR log and metric (once per
        loss and store, however many concurrent checks saw it)."""
        policy = self.settings.on_data_loss
        state = {"cutoff": "cutoff", "fail-closed": "fail-closed", "accept": "accepted"}[policy]
        at = now_us()
        cutoff = k.encode_mark(at, f"denylist {loss.kind}") if policy == "cutoff" else ""
        reported = (loss.kind, loss.seen_epoch, loss.observed.epoch)
        if reported != self._reported:
            self._reported = reported
            DENYLIST_LOST.labels(loss.kind, policy).inc()
            count_revocation("global", "recovery", 1 if policy == "cutoff" else 0, target=loss.kind)
            logger.error(
                "revocation data lost: %s; REVOKER_ON_DATA_LOSS=%s%s; run `revoker recover` "
                "once what can be restored is",
                loss.describe(),
                policy,
                ": every token issued before now is revoked" if policy == "cutoff" else "",
                extra={"loss": loss.kind, "policy": policy},
            )
        epoch = new_epoch()
        args = [
            "loss",
            loss.observed.epoch or "",
            state,
            epoch,
            cutoff,
            self.lifetimes.watermark_ttl,
            loss.seen_epoch or "",
            at,
        ]
        return self._identity_change(args, epoch, at if cutoff else 0)

    def _identity_change(self, args: list[Any], epoch: str, cutoff_us: int) -> Plan[Any]:
        """data_loss.lua with ``args``, and the "epoch" feed entry it appends (every reader loads
        a snapshot again; ``v`` the global cut-off written, 0 for none)."""
        keys = [self.keys.integrity, self.keys.global_watermark]
        if not self.cluster:
            keys.append(self.keys.feed)
        entry = k.encode_feed_entry("epoch", value_us=cutoff_us)
        return Plan(
            [ScriptCall("data_loss", keys, [*args, epoch, *self.feed_args(entry)])], self._adopt
        )

    def loss_not_durable(self, loss: Loss, error: Exception) -> None:
        """Log that a loss's handling was written but its durability wait fell short: a check
        does not fail for it (it answers by what it read), one ERROR line says so."""
        logger.error(
            "revocation data lost: the handling of the loss (%s) is not acknowledged as "
            "durable: %s",
            loss.kind,
            error,
        )

    def plan_loss_audit(self, loss: Loss) -> Plan[None] | None:
        """The audit entry (kind ``global``) of a loss handled by :meth:`plan_data_loss`, once
        per loss and store (None after the first), sent after the script: the plain write that
        REVOKER_DURABILITY's wait follows, so it covers the cut-off (store._durable)."""
        reported = (loss.kind, loss.seen_epoch, loss.observed.epoch)
        if reported == self._audited:
            return None
        self._audited = reported
        policy = self.settings.on_data_loss
        return self._global_audit(
            loss.kind, f"denylist {loss.kind}; REVOKER_ON_DATA_LOSS={policy}", "system"
        )

    def plan_recover_audit(self, *, cutoff: bool, actor: str | None) -> Plan[None]:
        """The audit entry of ``revoker recover`` (after :meth:`plan_recover`; see
        :meth:`plan_loss_audit` for why it is a plan of its own)."""
        mode = "cutoff" if cutoff else "accept"
        return self._global_audit("recover", f"recover --{mode}", actor or "operator")

    def _global_audit(self, target: str, reason: str, actor: str) -> Plan[None]:
        command = self.audit_command("global", target, reason=reason, actor=actor, at_us=now_us())
        return Plan([command], lambda _replies: None)

    def plan_recover(self, *, cutoff: bool, actor: str | None) -> Plan[tuple[Observation, Any]]:
        """``revoker recover``: adopt the data as it is now under a new epoch (``state``
        recovered), writing a global cut-off first if ``cutoff``."""
        at = now_us()
        mark = k.encode_mark(at, f"recovery by {actor or 'operator'}") if cutoff else ""
        epoch = new_epoch()
        args = ["recover", "", "recovered", epoch, mark, self.lifetimes.watermark_ttl, "", at]
        return self._identity_change(args, epoch, at if cutoff else 0)

    def plan_init(self) -> Plan[tuple[bool, str]]:
        """``revoker init``: create the epoch if there is none. (created?, the epoch)."""
        keys = [self.keys.integrity] if self.cluster else [self.keys.integrity, self.keys.feed]
        args = [new_epoch(), now_us(), *self.feed_args(k.encode_feed_entry("epoch"))]
        return Plan(
            [ScriptCall("init", keys, args)],
            lambda replies: (bool(replies[0][0]), _text(replies[0][1])),
        )

    def plan_integrity(self) -> Plan[dict[str, Any]]:
        """The integrity hash as stored, with the global watermark's time (or None)."""

        def finish(replies: list[Any]) -> dict[str, Any]:
            fields: dict[str, Any] = {_text(a): _text(b) for a, b in (replies[0] or {}).items()}
            fields["global_cutoff"] = (
                k.decode_mark(replies[1])[0] / 1e6 if replies[1] is not None else None
            )
            return fields

        return Plan([("HGETALL", self.keys.integrity), ("GET", self.keys.global_watermark)], finish)

    def _adopt(self, replies: list[Any]) -> tuple[Observation, Any]:
        reply = replies[0]
        observed = read_observation(reply[:5])
        self.watch.adopt(observed)
        return observed, reply[5]

    # --- the per-request check ---------------------------------------------------------------

    def check_keys(self, token: TokenData) -> list[str | None]:
        return self.keys.check_keys(token.jti, token.tenant, token.sub, token.family)

    def check_args(self, token: TokenData, keys: Sequence[str]) -> list[str]:
        """The check script's ARGV for ``keys`` (some of check_keys and the integrity hash):
        where the family's bucket is among them, the family id (its field), and where the
        integrity hash is."""
        integrity = self.keys.integrity
        at_integrity = str(keys.index(integrity) + 1) if integrity in keys else "0"
        if token.family is None:
            return ["0", "", at_integrity]
        bucket = self.keys.family_revoked(token.tenant, token.family)
        at = keys.index(bucket) + 1 if bucket in keys else 0
        return [str(at), token.family, at_integrity]

    @staticmethod
    def ordered_check_args(token: TokenData, present: Sequence[str]) -> list[str]:
        """:meth:`check_args` for ``present``: check_keys' keys that are not None, then the
        integrity hash, in that order (one group: a single Redis). The jti's key comes first,
        so the family's bucket is second and the integrity hash last: nothing to search."""
        n = str(len(present))
        return ["2", token.family, n] if token.family is not None else ["0", "", n]

    @staticmethod
    def group_by_slot(keys: Iterable[str]) -> dict[int, list[str]]:
        """Keys grouped by Redis Cluster slot, for one check script call per slot."""
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        return groups

    @staticmethod
    def decide(
        token: TokenData, keys: Sequence[str | None], found: dict[str, Any]
    ) -> RevocationStatus:
        return decide(token.iat, [found.get(key) if key is not None else None for key in keys])

    # --- audit and counters --------------------------------------------------------------------

    def audit_command(
        self,
        kind: str,
        target: str,
        *,
        tenant_id: str | None = None,
        reason: str | None,
        actor: str | None,
        at_us: int,
        extra: dict[str, str] | None = None,
    ) -> Command:
        fields: list[str] = [
            "kind", kind,
            "target", target,
            "tenant", tenant_id or "",
            "reason", reason or "",
            "actor", actor or "",
            "at", str(at_us),
        ]  # fmt: skip
        for name, value in (extra or {}).items():
            fields += [name, value]
        return ("XADD", self.keys.audit, "MAXLEN", "~", self.settings.audit_max_len, "*", *fields)

    def count_command(self, counter: str, amount: int = 1) -> Command:
        return ("HINCRBY", self.keys.stats, counter, amount)

    def plan_audit_range(
        self, low: str, high: str, *, count: int, reverse: bool = False
    ) -> Plan[list[tuple[Any, Any]]]:
        """Up to ``count`` audit entries with ids in [low, high] (``-``/``+``, ``(`` for an
        exclusive bound), oldest first or, ``reverse``, newest first (``revoker.audit`` pages
        and filters them)."""
        audit = self.keys.audit
        command: Command = (
            ("XREVRANGE", audit, high, low, "COUNT", count)
            if reverse
            else ("XRANGE", audit, low, high, "COUNT", count)
        )
        return Plan([command], lambda replies: list(replies[0] or []))

    # --- single revocations --------------------------------------------------------------------

    def plan_revoke_token(
        self,
        jti: str,
        *,
        expires_at: float | None,
        reason: str | None,
        actor: str | None,
    ) -> Plan[bool]:
        key = self.keys.jti(jti)
        at = now_us()
        ttl = self.lifetimes.jti_ttl(expires_at, at / 1e6)
        return Plan(
            [
                *self.sequenced(
                    [
                        # NX: a repeat keeps the first revocation's time and reason; EXPIRE GT
                        # still lets it extend the entry (a later call may know a later exp).
                        ("SET", key, k.encode_mark(at, reason), "EX", ttl, "NX", "GET"),
                        ("EXPIRE", key, ttl, "GT"),
                    ],
                    self.feed_entry("jti", at_us=at, ids=[jti], expires_at=expires_at),
                ),
                self.audit_command("token", jti, reason=reason, actor=actor, at_us=at),
                self.count_command("tokens"),
            ],
            lambda replies: self.written(replies, 1)[0] is None,
            atomic=True,
        )

    def plan_revoke_family(
        self,
        family_id: str,
        *,
        tenant_id: str | None,
        reason: str | None,
        actor: str | None,
    ) -> Plan[bool]:
        at = now_us()
        ttl = self.lifetimes.family_ttl
        bucket = self.keys.family_revoked(tenant_id, family_id)
        return Plan(
            [
                *self.sequenced(
                    [
                        # As for a jti: the first revocation's time and reason stay (see above).
                        ("HSETNX", bucket, family_id, k.encode_mark(at, reason)),
                        *self.bucket_ttl_commands(bucket, ttl),
                    ],
                    self.feed_entry("family", at_us=at, tenant_id=tenant_id, ids=[family_id]),
                ),
                self.audit_command(
                    "family", family_id, tenant_id=tenant_id, reason=reason, actor=actor, at_us=at
                ),
                self.count_command("families"),
            ],
            lambda replies: bool(self.written(replies, 1)[0]),
            atomic=True,
        )

    @staticmethod
    def bucket_ttl_commands(bucket: str, ttl: int) -> list[Command]:
        """Give a bucket of marks at least ``ttl`` more seconds: a new bucket gets it (NX), an
        older one is extended (GT), never shortened."""
        return [("EXPIRE", bucket, ttl, "NX"), ("EXPIRE", bucket, ttl, "GT")]

    def plan_watermark(
        self,
        kind: str,
        key: str,
        target: str,
        *,
        tenant_id: str | None,
        reason: str | None,
        actor: str | None,
    ) -> Plan[float]:
        at = now_us()
        ttl = self.lifetimes.watermark_ttl
        # A user's entry names the user; a tenant's names nobody (its tenant is the entry's t).
        ids = [target] if kind == "user" else []
        seq_keys, seq_args, seq_commands = self.script_sequence(
            self.feed_entry(kind, at_us=at, tenant_id=tenant_id, ids=ids)
        )
        return Plan(
            [
                ScriptCall(
                    "set_watermark", [key, *seq_keys], [k.encode_mark(at, reason), ttl, *seq_args]
                ),
                *seq_commands,
                self.audit_command(
                    kind, target, tenant_id=tenant_id, reason=reason, actor=actor, at_us=at
                ),
                self.count_command(f"{kind}s"),
            ],
            # The mark in force: ours, or a later one (an unreadable one is never kept: it reads 0).
            lambda replies: k.decode_mark(replies[0])[0] / 1e6,
        )

    def plan_revoke_user(
        self, user_id: str, *, tenant_id: str | None, reason: str | None, actor: str | None
    ) -> Plan[float]:
        return self.plan_watermark(
            "user",
            self.keys.user_watermark(tenant_id, user_id),
            user_id,
            tenant_id=tenant_id,
            reason=reason,
            actor=actor,
        )

    def plan_revoke_tenant(
        self, tenant_id: str, *, reason: str | None, actor: str | None
    ) -> Plan[float]:
        if tenant_id is None:
            raise InvalidIdentifier("tenant id must not be None")
        return self.plan_watermark(
            "tenant",
            self.keys.tenant_watermark(tenant_id),
            tenant_id,
            tenant_id=tenant_id,
            reason=reason,
            actor=actor,
        )

    def plan_rotation_precheck(self, token: TokenData) -> Plan[RevocationStatus]:
        """On a cluster, what rotate_refresh.lua cannot read from the tenant's slot: the token's
        jti and the global watermark (read beforehand, in their own slots)."""
        keys = [self.keys.jti(token.jti), self.keys.global_watermark]
        return Plan(
            [("GET", key) for key in keys],
            lambda replies: decide(token.iat, [replies[0], None, None, None, replies[1]]),
        )

    def plan_is_token_revoked(self, jti: str) -> Plan[bool]:
        return Plan([("EXISTS", self.keys.jti(jti))], lambda replies: bool(replies[0]))

    # --- sessions ------------------------------------------------------------------------------

    def session_bucket(self, tenant_id: str | None, family_id: str) -> str | None:
        """The bucket key of a family, or None for a family id not minted by start_session."""
        bucket = k.family_bucket(family_id)
        if bucket is None:
            return None
        return self.keys.session_bucket(tenant_id, bucket)

    def plan_record_session(self, family_id: str, **session: Unpack[NewSession]) -> Plan[None]:
        user_id, client_id = session["user_id"], session["client_id"]
        tenant_id = session["tenant_id"]
        created_us = to_us(session["created"])
        bucket = k.bucket_of_user(user_id, self.settings.session_buckets)
        if k.family_bucket(family_id) != bucket:
            raise InvalidIdentifier(
                f"family id {family_id!r} does not start with its user's bucket "
                f"{k.family_id_prefix(bucket)!r}"
            )
        k.escape_id(family_id, "family id")
        if client_id is not None:
            k.escape_id(client_id, "client id")
        record = k.encode_record(
            user_id=user_id,
            client_id=client_id,
            created_us=created_us,
            expires=session["expires"],
            current_jti=session["current_jti"],
            scopes=session["scopes"],
        )
        key = self.keys.session_bucket(tenant_id, bucket)
        ttl = self.lifetimes.family_ttl
        # A bucket expires with its newest session; all sessions share one lifetime, so the last
        # EXPIRE written is always the latest one.
        commands: list[Command | ScriptCall] = [
            ("HSET", key, family_id, record),
            ("EXPIRE", key, ttl),
        ]
        if client_id:
            # The client index (keys, "The client index"): after the record, so a bulk job
            # never finds an entry whose record is still to come; the same lifetime.
            index = self.keys.client_index(tenant_id, client_id, bucket)
            commands += [
                ("HSET", index, family_id, k.encode_index_entry(created_us)),
                ("EXPIRE", index, ttl),
            ]
        # The tenant's index marker: since when every session is indexed (the first indexed
        # creation's time; kept, never moved later, while sessions keep being created).
        marker = self.keys.client_index_marker(tenant_id)
        commands += [
            ("SET", marker, k.encode_index_since(created_us), "NX"),
            ("EXPIRE", marker, self.lifetimes.index_marker_ttl),
        ]
        return Plan(commands, lambda _r: None)

    def plan_get_session(
        self, family_id: str, *, tenant_id: str | None
    ) -> Plan[SessionRecord | None]:
        key = self.session_bucket(tenant_id, family_id)
        if key is None:
            return Plan([], lambda _replies: None)

        def finish(replies: list[Any]) -> SessionRecord | None:
            raw = replies[0]
            if not raw:
                return None
            data = k.decode_record(raw)
            extra = {
                name: data[name]
                for name in ("previous", "rotated", "successor", "issued")
                if data[name]
            }
            return SessionRecord(
                family_id=family_id,
                user_id=data["user"],
                tenant_id=tenant_id,
                client_id=data["client"] or None,
                # Times by keys.read_time: an unreadable one (never written so) reads 0.
                created=(_time(data["created"]) or 0) / 1e6,
                expires=_time(data["expires"]) or 0,
                current_jti=data["current"] or None,
                scopes=data["scopes"],
                extra=extra,
            )

        return Plan([("HGET", key, family_id)], finish)

    def plan_rotate(
        self, token: TokenData, *, check_jti: bool, **rotation: Unpack[Rotation]
    ) -> Plan[RotationReply]:
        """Make the pair (``refresh_jti``, ``access_jti``) current if ``token`` is; one script call.

        ``check_jti`` puts the token's jti key in the script; on a cluster it lives in another
        slot, so the caller checks it beforehand instead.
        """
        if token.family is None:
            raise InvalidIdentifier("a refresh token without a family cannot be rotated")
        tenant, family, user = token.tenant, token.family, token.sub
        reuse_mark = rotation["reuse_mark"]
        # The user's bucket, not the family id's: a family id naming another bucket is unknown.
        number = k.bucket_of_user(user, self.settings.session_buckets)
        bucket = self.keys.session_bucket(tenant, number)
        keys = [
            bucket,
            self.keys.family_revoked(tenant, family),
            self.keys.user_watermark(tenant, user),
        ]
        if tenant is not None:
            keys.append(self.keys.tenant_watermark(tenant))
        if check_jti:
            keys += [
                self.keys.jti(token.jti),
                self.keys.global_watermark,
                self.keys.integrity,
                self.keys.feed,
            ]
        if token.client:
            # Last: the family's client-index bucket, written again by a rotation with the
            # bucket's TTL (keys, "The client index"), so the index outlives the session.
            keys.append(self.keys.client_index(tenant, token.client, number))
        args = [
            k.escape_part(token.jti),
            to_us(token.iat),
            k.escape_part(user),
            k.escape_part(rotation["refresh_jti"]),
            k.escape_part(rotation["access_jti"]),
            rotation["issued_at_us"],
            rotation["expires_at"],
            self.settings.refresh_reuse_grace_seconds,
            self.lifetimes.family_ttl,
            reuse_mark,
            family,
            "1" if tenant is not None else "0",
            "1" if check_jti else "0",
            new_epoch() if check_jti else "",
        ]
        if check_jti:
            # The "family" entry a reuse mark appends (at the mark's time); on a cluster, none.
            entry = self.feed_entry(
                "family", at_us=k.decode_mark(reuse_mark)[0], tenant_id=tenant, ids=[family]
            )
            args += self.feed_args(entry)

        def finish(replies: list[Any]) -> RotationReply:
            reply = replies[0]
            outcome = _text(reply[0])
            if outcome == "grace":
                return RotationReply(
                    outcome,
                    unquote(_text(reply[1])),
                    unquote(_text(reply[2])),
                    _time(_text(reply[3])),
                )
            if outcome == "revoked":
                return RotationReply(outcome, status=decide(token.iat, list(reply[1:6])))
            return RotationReply(outcome)

        # On a cluster the script cannot reach the integrity hash: a reuse mark's bump goes beside
        # it (sent with every rotation there; the sequence only has to grow).
        bump: list[Command] = [] if check_jti else self.sequence_bump()
        return Plan([ScriptCall("rotate_refresh", keys, args), *bump], finish)

    def plan_reuse_count(self) -> Plan[None]:
        """After a rotation that found reuse (its script revoked the family): count the family
        revoked, a plain write sent after the script, which REVOKER_DURABILITY's wait follows
        so that it covers the reuse mark (store._durable); run with ``durable=True``."""
        return Plan([self.count_command("families")], lambda _replies: None)

    # --- health and stats ----------------------------------------------------------------------

    def plan_stats(self) -> Plan[dict[str, Any]]:
        def finish(replies: list[Any]) -> dict[str, Any]:
            counters = {_text(a): int(b) for a, b in (replies[0] or {}).items()}
            return {
                "revoked_tokens": counters.get("tokens", 0),
                "revoked_families": counters.get("families", 0),
                "user_revocations": counters.get("users", 0),
                "tenant_revocations": counters.get("tenants", 0),
                "families_revoked_by_jobs": counters.get("job_families", 0),
                "audit_entries": int(replies[1]),
                "key_prefix": self.settings.key_prefix,
            }

        return Plan([("HGETALL", self.keys.stats), ("XLEN", self.keys.audit)], finish)

    #: The shape of a health probe's result belongs to :mod:`revoker.health`.
    health_result = staticmethod(probe_result)
