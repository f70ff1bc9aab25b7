"""A circuit breaker for the per-request check.

While Redis is down, every check would wait the full Redis timeout before the failure policy
applies. After ``failures`` consecutive failures the breaker opens: checks fail at once, without
touching Redis, for ``reset_seconds``. Then one trial check is let through (half-open); its
success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "State", "Transition"]

State = Literal["closed", "open", "half-open"]
#: ``(before, after)`` when a recorded outcome changed the breaker's state.
Transition = tuple[State, State]


class CircuitBreaker:
    """Consecutive-failure breaker. Not thread-safe: one per event loop."""

    def __init__(
        self,
        failures: int = 5,
        reset_seconds: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        if not reset_seconds > 0:
            raise ValueError("reset_seconds must be positive")
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_started: float | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_seconds:
            return "half-open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self) -> bool:
        """Whether a call may go to Redis now (in half-open state: one trial at a time)."""
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.reset_seconds:
            return False
        # A trial whose outcome never came back (its request was cancelled by a client that
        # hung up) must not wedge the breaker half-open forever: it lapses like an open period.
        if self._trial_started is not None and now - self._trial_started < self.reset_seconds:
            return False
        self._trial_started = now
        return True

    def record_success(self) -> Transition | None:
        before = self.state
        self._consecutive = 0
        self._opened_at = None
        self._trial_started = None
        return (before, "closed") if before != "closed" else None

    def record_failure(self) -> Transition | None:
        before = self.state
        self._consecutive += 1
        self._trial_started = None
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        after = self.state
        return (before, after) if before != after else None
