"""Failed-login slowdown: free attempts, exponential spacing, in-flight attempts, 429, forgetting."""

import pytest

from registry_operator.token.throttle import FailureThrottle, TooManyAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **overrides: float) -> FailureThrottle:
    options = {"free_failures": 2, "base_delay": 1.0, "max_delay": 8.0, "max_wait": 20.0, "forget_after": 100.0}
    return FailureThrottle(clock=clock, **{**options, **overrides})  # type: ignore[arg-type]


def attempt(t: FailureThrottle, user: str, address: str, ok: bool = False) -> float:
    wait = t.reserve(user, address)
    t.settle(user, address, ok)
    return wait


def test_delay_schedule() -> None:
    t = throttle(Clock())
    assert [t.delay(n) for n in range(8)] == [0, 0, 1, 2, 4, 8, 8, 8]


def test_first_failures_are_free_then_attempts_are_spaced_exponentially() -> None:
    clock = Clock()
    t = throttle(clock)
    assert attempt(t, "alice", "a") == 0 and attempt(t, "alice", "a") == 0
    assert t.reserve("alice", "a") == pytest.approx(1.0)
    clock.now = 1.0
    t.settle("alice", "a", ok=False)  # 3rd failure doubles the spacing
    assert t.reserve("alice", "a") == pytest.approx(2.0)


def test_in_flight_attempts_on_one_user_are_serialized_then_refused() -> None:
    t = throttle(Clock(), max_delay=2.0)
    waits = [t.reserve("alice", f"10.0.0.{i}") for i in range(6)]
    assert waits == pytest.approx([0, 0, 1, 3, 5, 7])
    t2 = throttle(Clock(), max_delay=8.0)
    with pytest.raises(TooManyAttempts) as refused:
        for i in range(10):
            t2.reserve("alice", f"10.0.0.{i}")
    assert refused.value.retry_after > 20


def test_concurrent_logins_of_different_users_from_one_address_are_not_queued() -> None:
    t = throttle(Clock())
    assert [t.reserve(f"user{i}", "10.0.0.1") for i in range(20)] == [0] * 20


def test_failures_from_one_address_slow_every_user_from_it() -> None:
    t = throttle(Clock())
    for i in range(4):  # one address spraying four different users
        attempt(t, f"u{i}", "10.0.0.9")
    assert t.reserve("alice", "10.0.0.9") > 0
    assert t.reserve("alice", "10.0.0.1") == 0


def test_success_resets_the_user_but_not_the_address() -> None:
    t = throttle(Clock())
    for _ in range(4):
        attempt(t, "alice", "a")
    attempt(t, "alice", "a", ok=True)
    assert t.reserve("alice", "b") == 0
    assert t.reserve("bob", "a") > 0


def test_records_are_forgotten_after_a_quiet_period() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(5):
        attempt(t, "alice", "a")
    clock.now += 101
    assert attempt(t, "alice", "a") == 0
    assert attempt(t, "alice", "a") == 0  # counting starts again


def test_memory_is_bounded_and_clean_records_are_dropped() -> None:
    t = FailureThrottle(max_entries=10, clock=Clock())
    for i in range(100):
        attempt(t, f"u{i}", f"10.0.0.{i}")
    assert len(t._entries) == 10  # noqa: SLF001
    t2 = FailureThrottle(clock=Clock())
    attempt(t2, "alice", "a", ok=True)
    assert len(t2._entries) == 0  # noqa: SLF001
