"""Failed-login slowdown: free attempts, exponential spacing, serialization, 429, forgetting."""

import pytest
from registry_operator.token.throttle import FailureThrottle, TooManyAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **overrides: float) -> FailureThrottle:
    options = {
        "free_failures": 2,
        "base_delay": 1.0,
        "max_delay": 8.0,
        "max_wait": 20.0,
        "forget_after": 100.0,
    }
    return FailureThrottle(clock=clock, **{**options, **overrides})  # type: ignore[arg-type]


def test_delay_schedule() -> None:
    t = throttle(Clock())
    assert [t.delay(n) for n in range(8)] == [0, 0, 1, 2, 4, 8, 8, 8]


def test_first_failures_are_free_then_attempts_wait() -> None:
    clock = Clock()
    t = throttle(clock)
    keys = ["user:alice", "addr:1.2.3.4"]
    for _ in range(2):
        assert t.reserve(keys) == 0
        t.failed(keys)
    assert t.reserve(keys) == pytest.approx(1.0)  # two free failures, then 1 s apart
    clock.now = 1.0
    t.failed(keys)  # the 3rd failure doubles the spacing
    assert t.reserve(keys) == pytest.approx(2.0)


def test_parallel_attempts_are_serialized_then_refused() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(3):
        t.failed(["user:alice"])
    waits = [t.reserve(["user:alice"]) for _ in range(4)]
    assert waits == pytest.approx([2.0, 4.0, 6.0, 8.0])
    for _ in range(6):
        t.reserve(["user:alice"])
    with pytest.raises(TooManyAttempts) as refused:
        t.reserve(["user:alice"])
    assert refused.value.retry_after > 20


def test_per_user_and_per_address_are_independent() -> None:
    clock = Clock()
    t = throttle(clock)
    for i in range(4):  # one address spraying four different users
        t.failed([f"user:u{i}", "addr:10.0.0.9"])
    assert t.reserve(["user:alice", "addr:10.0.0.9"]) > 0
    assert t.reserve(["user:alice", "addr:10.0.0.1"]) == 0


def test_success_resets_the_user_but_not_the_address() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(4):
        t.failed(["user:alice", "addr:a"])
    t.succeeded("user:alice")
    assert t.reserve(["user:alice", "addr:b"]) == 0
    assert t.reserve(["user:bob", "addr:a"]) > 0


def test_entries_are_forgotten_after_a_quiet_period() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(5):
        t.failed(["user:alice"])
    clock.now += 101
    assert t.reserve(["user:alice"]) == 0
    t.failed(["user:alice"])
    assert t.reserve(["user:alice"]) == 0  # counting starts again


def test_memory_is_bounded() -> None:
    t = FailureThrottle(max_entries=10, clock=Clock())
    for i in range(100):
        t.failed([f"user:u{i}"])
    assert len(t._entries) == 10  # noqa: SLF001
