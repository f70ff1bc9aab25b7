"""Prometheus metrics of the per-request check and of revocations.

Registered on prometheus-client's default registry, so a service's existing ``/metrics`` endpoint
exposes them; ``revoker.api`` serves them too.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["BREAKER_OPEN", "CHECKS", "CHECK_LATENCY", "DENYLIST_LOST", "REVOCATIONS"]

#: Checked requests by outcome: ok, revoked, invalid, missing, error_open (let through while
#: Redis failed), error_closed (503 while Redis failed).
CHECKS: Final = Counter(
    "revoker_checks_total", "Tokens checked by the middleware, by outcome.", ["outcome"]
)
#: Seconds spent in the revocation lookup (Redis round trip and decision), not in verification.
CHECK_LATENCY: Final = Histogram(
    "revoker_check_seconds",
    "Latency of the revocation lookup.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BREAKER_OPEN: Final = Gauge(
    "revoker_breaker_open", "1 while the Redis circuit breaker is open (checks skip Redis)."
)
#: Revocations written, by kind (token, family, user, tenant, job_family).
REVOCATIONS: Final = Counter("revoker_revocations_total", "Revocations written.", ["kind"])
#: Losses or rollbacks of the denylist this process detected, by kind (wiped, rolled_back,
#: epoch_changed) and by the REVOKER_ON_DATA_LOSS policy in force.
DENYLIST_LOST: Final = Counter(
    "revoker_denylist_lost", "Denylist losses or rollbacks detected.", ["kind", "policy"]
)

# --- the mirror (revoker.mirror; REVOKER_CHECK_MODE=mirror) ----------------------------------
# The gauges are read from the process's mirrors when scraped (revoker.mirror registers the
# functions): nothing is updated per request.
__all__ += [
    "MIRROR_BYTES",
    "MIRROR_ENTRIES",
    "MIRROR_FALLBACKS",
    "MIRROR_LAG",
    "MIRROR_RESYNCS",
    "MIRROR_STALENESS",
]
#: Seconds since the mirror's last complete read of the change feed (the largest of the
#: process's mirrors; 0 when there is none).
MIRROR_LAG: Final = Gauge(
    "revoker_mirror_lag_seconds", "Seconds since the mirror's last complete read of the feed."
)
#: While the mirror cannot read the feed (Redis unreachable): its lag; 0 while it reads.
MIRROR_STALENESS: Final = Gauge(
    "revoker_mirror_staleness_seconds",
    "Age of the mirror's state while it cannot read the feed (0 while it can).",
)
MIRROR_ENTRIES: Final = Gauge(
    "revoker_mirror_entries", "Revocation entries the mirror holds, by kind.", ["kind"]
)
MIRROR_BYTES: Final = Gauge("revoker_mirror_bytes", "Bytes of revocation state the mirror holds.")
#: Snapshots loaded, by reason: start, trimmed (the feed was trimmed past the mirror), epoch (an
#: epoch entry: data loss, recovery or init), loss (this mirror detected one), rolled_back (the
#: feed is behind the mirror), unreadable (an entry this version cannot read).
MIRROR_RESYNCS: Final = Counter(
    "revoker_mirror_resyncs", "Snapshots the mirror loaded, by reason.", ["reason"]
)
#: Checks in mirror mode not answered from a fresh mirror: `redis` (asked Redis: the mirror was
#: loading or past REVOKER_MIRROR_MAX_LAG), `stale` (Redis failed; answered from the mirror within
#: REVOKER_MIRROR_MAX_STALENESS).
MIRROR_FALLBACKS: Final = Counter(
    "revoker_mirror_fallbacks", "Mirror-mode checks not answered by a fresh mirror.", ["to"]
)
