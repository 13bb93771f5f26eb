"""Failed-login slowdown per (user, address): free attempts, exponential spacing, in-flight
attempts, 429, the per-address budget, forgetting, and memory bounds."""

import pytest

from registry_operator.token.throttle import FailureThrottle, TooManyAttempts, address_group


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
        "address_burst": 10,
        "address_refill": 0.5,
    }
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


def test_in_flight_attempts_on_one_pair_are_serialized_then_refused() -> None:
    t = throttle(Clock(), max_delay=2.0)
    waits = [t.reserve("alice", "10.0.0.1") for _ in range(6)]
    assert waits == pytest.approx([0, 0, 1, 3, 5, 7])
    t2 = throttle(Clock(), max_delay=8.0)
    with pytest.raises(TooManyAttempts) as refused:
        for _ in range(10):
            t2.reserve("alice", "10.0.0.1")
    assert refused.value.retry_after > 20


def test_a_failing_client_does_not_slow_the_same_user_elsewhere_nor_others_behind_its_address() -> None:
    t = throttle(Clock())
    for _ in range(5):  # a misconfigured client behind the shared SNAT address
        attempt(t, "alice", "10.0.0.9")
    assert t.reserve("alice", "10.0.0.9") > 0
    assert t.reserve("alice", "10.0.0.1") == 0  # alice from her own machine
    assert t.reserve("bob", "10.0.0.9") == 0  # a colleague behind the same address


def test_concurrent_logins_of_different_users_from_one_address_are_not_queued() -> None:
    t = throttle(Clock(), address_burst=50)
    assert [t.reserve(f"user{i}", "10.0.0.1") for i in range(20)] == [0] * 20


def test_one_address_cannot_spray_unlimited_users_and_recovers_as_the_budget_refills() -> None:
    clock = Clock()
    t = throttle(clock)  # budget 10, refills one every 2 s
    for i in range(10):
        assert attempt(t, f"u{i}", "10.0.0.9") == 0
    with pytest.raises(TooManyAttempts) as refused:
        t.reserve("u10", "10.0.0.9")
    assert refused.value.retry_after == pytest.approx(2.0)
    assert t.reserve("u10", "10.0.0.1") == 0  # other addresses are unaffected
    clock.now = 2.0
    assert attempt(t, "u10", "10.0.0.9") == 0
    with pytest.raises(TooManyAttempts):
        t.reserve("u11", "10.0.0.9")


def test_attempts_in_flight_count_against_the_address_budget() -> None:
    t = throttle(Clock())
    for i in range(10):
        t.reserve(f"u{i}", "10.0.0.9")
    with pytest.raises(TooManyAttempts):
        t.reserve("u10", "10.0.0.9")
    t.settle("u0", "10.0.0.9", ok=True)
    assert t.reserve("u10", "10.0.0.9") == 0


def test_success_resets_the_pair_but_not_the_address() -> None:
    t = throttle(Clock())
    for _ in range(4):
        attempt(t, "alice", "a")
    attempt(t, "alice", "a", ok=True)
    assert attempt(t, "alice", "a") == 0
    for i in range(5):
        attempt(t, f"u{i}", "a")
    with pytest.raises(TooManyAttempts):  # 4 + 1 + 5 failures: alice's success did not lower the level
        t.reserve("bob", "a")


def test_ipv6_clients_share_a_budget_per_64() -> None:
    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_group("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_group("10.0.0.1") == "10.0.0.1" and address_group("unknown") == "unknown"
    t = throttle(Clock())
    for i in range(10):
        attempt(t, f"u{i}", f"2001:db8::{i:x}")
    with pytest.raises(TooManyAttempts):
        t.reserve("u10", "2001:db8::ffff")


def test_records_are_created_only_on_failure() -> None:
    t = throttle(Clock())
    for i in range(9):
        t.reserve(f"user{i}", "10.0.0.1")
    assert t.records() == 0  # in flight, nothing recorded
    for i in range(9):
        t.settle(f"user{i}", "10.0.0.1", ok=True)
    assert t.records() == 0 and not t._pair_flight and not t._address_flight  # noqa: SLF001
    attempt(t, "mallory", "10.0.0.1")
    assert t.records() == 2  # one pair, one address


def test_records_are_forgotten_after_a_quiet_period_and_pruned_without_being_touched() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(5):
        attempt(t, "alice", "a")
    for i in range(5):
        attempt(t, f"u{i}", f"10.0.{i}.1")
    assert t.records() == 6 + 6  # pairs, addresses
    clock.now += 101
    assert attempt(t, "alice", "a") == 0
    assert t.records() == 2  # the other records were pruned by this attempt alone
    assert attempt(t, "alice", "a") == 0  # counting starts again


def test_user_names_are_kept_as_fixed_size_digests() -> None:
    t = throttle(Clock())
    attempt(t, "x" * 100_000, "10.0.0.1")
    ((digest, group),) = t._pairs  # noqa: SLF001
    assert len(digest) == 16 and group == "10.0.0.1"


def test_tables_are_capped_the_oldest_record_goes_first() -> None:
    clock = Clock()
    t = throttle(clock, max_entries=10, address_burst=1000)
    for i in range(100):
        clock.now += 0.01
        attempt(t, f"u{i}", f"10.0.{i}.1")
    assert len(t._pairs) == 10 and len(t._addresses) == 10  # noqa: SLF001
    assert "10.0.99.1" in t._addresses and "10.0.89.1" not in t._addresses  # noqa: SLF001
