"""The per-process revocation mirror (``REVOKER_CHECK_MODE=mirror``).

Each service process keeps a copy of what the per-request check reads (revoked jtis of live
tokens, revoked families, user, tenant and global watermarks), loaded from a snapshot and kept
current by the change feed (``P:feed``, :mod:`revoker.keys`), so a checked request costs no Redis
command. The check (:mod:`revoker.check`) chooses the mode; this package is the mirror:

==================  ===========================================================================
``_digests``        the compact set of revoked families (fixed-width digests, grouped buffer)
``_state``          what one mirror holds and its decision (``rules.decide`` on the same values)
``_mirror``         one mirror: snapshot and follower task (the store's feed plans), freshness,
                    loss handling
==================  ===========================================================================

One mirror per event loop and configuration (:func:`get_mirror`), started lazily by the first
check and stopped by :func:`stop_mirrors` (or with its loop). The freshness contract: a token is
judged from the mirror only while it has read the whole feed within REVOKER_MIRROR_MAX_LAG;
otherwise Redis is asked, and if Redis cannot answer the mirror's state serves for at most
REVOKER_MIRROR_MAX_STALENESS after its last complete read, then the failure policy applies.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from revoker.metrics import MIRROR_BYTES, MIRROR_ENTRIES, MIRROR_LAG, MIRROR_STALENESS
from revoker.mirror._digests import DigestSet
from revoker.mirror._mirror import Mirror
from revoker.mirror._state import MirrorState
from revoker.settings import RevokerSettings

if TYPE_CHECKING:
    from revoker.store import RedisTokenRevocationStore

__all__ = [
    "DigestSet",
    "Mirror",
    "MirrorState",
    "get_mirror",
    "mirror_report",
    "mirrors",
    "stop_mirrors",
]

_lock = threading.Lock()
#: Per event loop, the mirrors by (Redis URL, key prefix): a connection belongs to its loop.
_mirrors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Mirror]] = (
    weakref.WeakKeyDictionary()
)

#: Mirrors being stopped in the background (a task needs a reference until it is done).
_stopping: set[asyncio.Task[None]] = set()


def get_mirror(settings: RevokerSettings, store: RedisTokenRevocationStore | None = None) -> Mirror:
    """The running loop's mirror of ``settings``' data, started if it was not."""
    loop = asyncio.get_running_loop()
    name = (settings.redis_url, settings.key_prefix)
    with _lock:
        per_loop = _mirrors.setdefault(loop, {})
        mirror = per_loop.get(name)
        if mirror is not None and mirror.settings != settings:
            # Reconfigured (another lag bound, another policy): the old one stops.
            _stopping.add(task := loop.create_task(mirror.stop()))
            task.add_done_callback(_stopping.discard)
            mirror = None
        if mirror is None:
            mirror = per_loop[name] = Mirror(settings, store)
    mirror.start()
    return mirror


def mirrors() -> list[Mirror]:
    """Every mirror of this process (all loops)."""
    with _lock:
        return [m for per_loop in list(_mirrors.values()) for m in per_loop.values()]


async def stop_mirrors() -> None:
    """Stop the running loop's mirrors (a lifespan's shutdown, a test's teardown)."""
    loop = asyncio.get_running_loop()
    with _lock:
        found = list(_mirrors.pop(loop, {}).values())
    for mirror in found:
        await mirror.stop()


def mirror_report() -> list[dict[str, Any]]:
    """What health shows: one report per mirror of this process."""
    return [m.report() for m in mirrors()]


def _lag() -> float:
    lags = [m.lag() for m in mirrors()]
    finite = [lag for lag in lags if math.isfinite(lag)]
    return max(finite) if finite else 0.0


def _staleness() -> float:
    now = time.monotonic()
    return max((m.lag(now) for m in mirrors() if m.error is not None and m.state), default=0.0)


def _entries(kind: str) -> float:
    return float(sum(m.state.entries()[kind] for m in mirrors() if m.state is not None))


MIRROR_LAG.set_function(_lag)
MIRROR_STALENESS.set_function(_staleness)
MIRROR_BYTES.set_function(lambda: float(sum(m.state.nbytes for m in mirrors() if m.state)))


def _entries_of(kind: str) -> Callable[[], float]:
    return lambda: _entries(kind)


for _kind in ("jti", "family", "user", "tenant", "global"):
    MIRROR_ENTRIES.labels(_kind).set_function(_entries_of(_kind))
