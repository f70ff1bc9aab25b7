"""Prometheus metrics of the per-request check and of revocations.

Registered on prometheus-client's default registry, so a service's existing ``/metrics`` endpoint
exposes them; ``revoker.api`` serves them too.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BREAKER_OPEN",
    "CHECKS",
    "CHECK_LATENCY",
    "DENYLIST_LOST",
    "EVENTS",
    "REVOCATIONS",
]

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
#: Shared Signals events and logout tokens (revoker.events) by outcome: routed (queued for a
#: stream), delivered (a push accepted, a poll acknowledged), retried (a push failed, backing
#: off), dead_lettered. Counted by the process that did it (the worker; the API for polls).
EVENTS: Final = Counter("revoker_events_total", "Security events, by outcome.", ["outcome"])
