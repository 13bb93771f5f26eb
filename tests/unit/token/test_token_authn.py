"""Logins: bcrypt in a thread, cached successes, invalidation on htpasswd change, merging of
identical concurrent attempts, and the throttle in front of bcrypt."""

import asyncio
from collections.abc import Callable

import pytest

from registry_operator.token.authn import Authenticator
from registry_operator.token.htpasswd import Htpasswd, parse_htpasswd
from registry_operator.token.throttle import FailureThrottle, TooManyAttempts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Table:
    """Stands in for the file watcher: returns the current table, replaced on 'reload'."""

    def __init__(self, text: str) -> None:
        self.table = parse_htpasswd(text)

    def __call__(self) -> Htpasswd:
        return self.table


def authenticator(text: str, **kwargs: object) -> Authenticator:
    throttle = kwargs.pop("throttle", None) or FailureThrottle(free_failures=100)
    return Authenticator(Table(text), throttle, **kwargs)  # type: ignore[arg-type]


def login(auth: Authenticator, user: str, password: str) -> bool:
    return asyncio.run(auth.login(user, password, "10.0.0.1"))


def test_success_is_cached_and_skips_bcrypt(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw"}))
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 1
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 1


def test_cache_keys_do_not_hold_the_password(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw-0123456789"}))
    assert login(auth, "alice", "pw-0123456789")
    (key,) = auth._cache  # noqa: SLF001 - inspecting what is kept in memory
    assert b"pw-0123456789" not in key and b"alice" not in key and len(key) == 32


def test_failures_are_not_cached(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw"}))
    assert not login(auth, "alice", "wrong") and not login(auth, "alice", "wrong")
    assert auth.bcrypt_checks == 2
    assert login(auth, "alice", "pw") and not login(auth, "alic", "epw") and auth.bcrypt_checks == 4


def test_cache_expires(make_htpasswd: Callable[..., str]) -> None:
    clock = Clock()
    auth = authenticator(make_htpasswd({"alice": "pw"}), cache_ttl=60, clock=clock)
    assert login(auth, "alice", "pw")
    clock.now += 59
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 1
    clock.now += 2
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 2


def test_htpasswd_reload_drops_the_cache(make_htpasswd: Callable[..., str]) -> None:
    source = Table(make_htpasswd({"alice": "pw"}))
    auth = Authenticator(source, FailureThrottle())
    assert login(auth, "alice", "pw")
    source.table = parse_htpasswd(make_htpasswd({"alice": "new-pw"}))
    assert not login(auth, "alice", "pw") and login(auth, "alice", "new-pw")


def test_unknown_user_still_costs_a_bcrypt_check(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw"}))
    # the decoy check uses alice's hash: even her password must not log in "mallory"
    assert not login(auth, "mallory", "pw") and auth.bcrypt_checks == 1


def test_overlong_password_and_empty_file(make_htpasswd: Callable[..., str]) -> None:
    assert not login(authenticator(make_htpasswd({"alice": "pw"})), "alice", "x" * 73)
    assert not login(authenticator(""), "alice", "pw")


def test_cache_is_bounded(make_htpasswd: Callable[..., str]) -> None:
    users = {f"u{i}": "pw" for i in range(5)}
    auth = authenticator(make_htpasswd(users), max_cached=3)
    for user in users:
        assert login(auth, user, "pw")
    assert len(auth._cache) == 3  # noqa: SLF001
    assert login(auth, "u4", "pw") and auth.bcrypt_checks == 5


def test_identical_concurrent_logins_share_one_check(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw"}), throttle=FailureThrottle(free_failures=0))

    async def burst() -> list[bool]:
        return await asyncio.gather(*(auth.login("alice", "pw", f"10.0.0.{i}") for i in range(20)))

    assert asyncio.run(burst()) == [True] * 20
    assert auth.bcrypt_checks == 1


def test_parallel_guesses_for_one_user_are_queued_then_refused(make_htpasswd: Callable[..., str]) -> None:
    throttle = FailureThrottle(free_failures=2, base_delay=0.2, max_delay=0.2, max_wait=0.5)
    auth = authenticator(make_htpasswd({"alice": "pw"}), throttle=throttle)

    async def burst() -> list[object]:
        guesses = (auth.login("alice", f"guess{i}", "10.0.0.1") for i in range(10))
        return await asyncio.gather(*guesses, return_exceptions=True)

    results = asyncio.run(burst())
    assert results.count(False) == 4  # waits 0, 0, 200, 400 ms; the next would wait 600 > 500 ms
    assert all(isinstance(r, TooManyAttempts) for r in results if r is not False)
    assert auth.bcrypt_checks == 4


def test_throttled_user_with_cached_credentials_still_logs_in(make_htpasswd: Callable[..., str]) -> None:
    throttle = FailureThrottle(free_failures=0, base_delay=10, max_wait=1)
    auth = authenticator(make_htpasswd({"alice": "pw"}), throttle=throttle)
    assert login(auth, "alice", "pw")
    throttle.settle("alice", "10.0.0.9", ok=False)
    with pytest.raises(TooManyAttempts):
        login(auth, "alice", "guess")
    assert login(auth, "alice", "pw")
