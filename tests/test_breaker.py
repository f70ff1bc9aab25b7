"""The circuit breaker, driven by an injected clock: no sleeping, exact boundaries."""

from __future__ import annotations

import pytest

from revoker.breaker import CircuitBreaker


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    """A clock at t=1000."""
    return Clock()


def make(clock: Clock, failures: int = 3, reset: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker(failures, reset, clock=clock)


def test_stays_closed_below_threshold(clock: Clock) -> None:
    """Fewer consecutive failures than the threshold leave every call allowed."""
    breaker = make(clock)
    assert breaker.record_failure() is None
    assert breaker.record_failure() is None
    assert breaker.state == "closed"
    assert breaker.allow()


def test_success_resets_the_count(clock: Clock) -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.record_success() is None
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_opens_at_threshold_and_refuses_until_reset(clock: Clock) -> None:
    """The Nth failure opens the breaker; calls are refused until reset_seconds have passed."""
    breaker = make(clock, failures=3, reset=5.0)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.record_failure() == ("closed", "open")
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(4.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.state == "half-open"


def test_half_open_lets_one_trial_through(clock: Clock) -> None:
    """After the reset period exactly one trial call is allowed; the others keep failing fast."""
    breaker = make(clock, failures=1, reset=2.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()


def test_trial_success_closes(clock: Clock) -> None:
    """A successful trial closes the breaker and every call is allowed again."""
    breaker = make(clock, failures=1, reset=2.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    assert breaker.record_success() == ("half-open", "closed")
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_trial_failure_reopens_for_a_full_period(clock: Clock) -> None:
    """A failed trial opens the breaker again, counted from the trial's failure."""
    breaker = make(clock, failures=2, reset=2.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(3.0)
    assert breaker.allow()
    clock.advance(0.5)
    assert breaker.record_failure() == ("half-open", "open")
    clock.advance(1.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_lost_trial_does_not_wedge_the_breaker(clock: Clock) -> None:
    """A trial whose outcome never comes back (cancelled request) lapses after reset_seconds."""
    breaker = make(clock, failures=1, reset=2.0)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()  # the trial; its request is cancelled and reports nothing
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_late_failure_while_open_extends_the_open_period(clock: Clock) -> None:
    """A failure reported while open (a call started before opening) reports no transition."""
    breaker = make(clock, failures=1, reset=2.0)
    breaker.record_failure()
    clock.advance(1.5)
    assert breaker.record_failure() is None
    clock.advance(1.0)
    assert breaker.state == "open"


def test_late_success_while_open_closes(clock: Clock) -> None:
    """Any success proves Redis answers: the breaker closes at once."""
    breaker = make(clock, failures=1, reset=10.0)
    breaker.record_failure()
    assert breaker.record_success() == ("open", "closed")
    assert breaker.allow()


@pytest.mark.parametrize(("failures", "reset"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense_parameters(failures: int, reset: float) -> None:
    """A breaker that could never close or never open is a configuration error."""
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failures, reset)
