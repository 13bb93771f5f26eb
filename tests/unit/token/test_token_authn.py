"""Logins: bcrypt in a thread, cached successes, invalidation on htpasswd change, merging of
identical concurrent attempts, the throttle in front of bcrypt, the decoy for unknown users,
input length limits, and how user names appear in logs."""

import asyncio
from collections.abc import Callable

import bcrypt
import pytest

from registry_operator.token import authn
from registry_operator.token.authn import Authenticator, bcrypt_cost, make_decoy
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
    assert not login(auth, "alice", "guess")
    with pytest.raises(TooManyAttempts):
        login(auth, "alice", "guess again")
    assert login(auth, "alice", "pw")


def test_names_and_passwords_too_long_to_exist_cost_nothing(make_htpasswd: Callable[..., str]) -> None:
    throttle = FailureThrottle(free_failures=0, base_delay=10, max_wait=1)
    auth = authenticator(make_htpasswd({"alice": "pw"}), throttle=throttle)
    for user, password in (("x" * 257, "pw"), ("é" * 129, "pw"), ("alice", "p" * 73), ("", "pw")):
        for _ in range(3):  # repeats are neither throttled nor recorded
            assert not login(auth, user, password)
    assert auth.bcrypt_checks == 0 and throttle.records() == 0
    assert login(auth, "a" * 256, "pw") is False and auth.bcrypt_checks == 1  # the longest allowed is checked


def hashed(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def test_decoy_is_a_hash_at_the_highest_cost_in_use_and_follows_reloads() -> None:
    source = Table(f"cheap:{hashed('pw', 4)}\ncostly:{hashed('pw', 6)}\n")
    auth = Authenticator(source, FailureThrottle())
    decoy, cost = auth._decoy_for(source.table) or (b"", 0)  # noqa: SLF001
    assert cost == 6 and bcrypt_cost(decoy) == 6 and not bcrypt.checkpw(b"pw", decoy)
    assert auth._decoy_for(source.table) == (decoy, 6)  # noqa: SLF001 - built once per table
    source.table = parse_htpasswd(f"cheap:{hashed('pw', 5)}\n")
    assert auth._decoy_for(source.table)[1] == 5  # type: ignore[index]  # noqa: SLF001
    assert [bcrypt_cost(make_decoy(c)) for c in (4, 10, 12)] == [4, 10, 12]
    assert bcrypt_cost(b"$2y$10$" + b"x" * 53) == 10 and bcrypt_cost(b"plain") is bcrypt_cost(b"$2b$99$x") is None


def test_every_failure_pays_one_run_at_the_highest_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = authenticator(f"cheap:{hashed('pw', 4)}\ncostly:{hashed('pw', 6)}\n")
    runs: list[int | None] = []
    real_check = authn._check

    def counting_check(password: bytes, digest: bytes) -> bool:
        runs.append(bcrypt_cost(digest))
        return real_check(password, digest)

    monkeypatch.setattr(authn, "_check", counting_check)
    outcomes = {}
    for user, password in (("mallory", "pw"), ("costly", "nope"), ("cheap", "nope"), ("cheap", "pw")):
        runs.clear()
        outcomes[user, password] = (login(auth, user, password), list(runs))
    assert outcomes == {
        ("mallory", "pw"): (False, [6]),  # the decoy: as costly as a wrong password for "costly"
        ("costly", "nope"): (False, [6]),
        ("cheap", "nope"): (False, [4, 6]),  # the cheap hash, then the decoy
        ("cheap", "pw"): (True, [4]),  # success does not wait
    }


def test_log_descriptions_never_show_an_unknown_name(make_htpasswd: Callable[..., str]) -> None:
    auth = authenticator(make_htpasswd({"alice": "pw", "ci@corp": "pw"}))
    pasted = "correct horse battery staple"
    shown = auth.describe(pasted)
    assert shown.startswith("unknown user #") and len(shown) == len("unknown user #") + 12
    assert "horse" not in shown and auth.describe(pasted) == shown != auth.describe(pasted + "!")
    assert Authenticator(Table(""), FailureThrottle()).describe(pasted) != shown  # keyed per process
    assert auth.describe("alice") == "user 'alice'" and auth.describe("ci@corp") == "user 'ci@corp'"
    assert auth.describe("x" * 1_000_000) == "an over-long user name (1000000 bytes)"
