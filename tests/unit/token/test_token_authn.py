"""Credential checks: bcrypt in a thread, cached successes, invalidation on htpasswd change."""

import asyncio
from collections.abc import Callable

from registry_operator.token.authn import Authenticator
from registry_operator.token.htpasswd import Htpasswd, parse_htpasswd


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


def login(auth: Authenticator, user: str, password: str) -> bool:
    """What the endpoint does: cache first, then bcrypt."""
    return auth.cached(user, password) or asyncio.run(auth.verify(user, password))


def test_success_is_cached_and_skips_bcrypt(make_htpasswd: Callable[..., str]) -> None:
    auth = Authenticator(Table(make_htpasswd({"alice": "pw"})))
    assert not auth.cached("alice", "pw")
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 1
    assert auth.cached("alice", "pw")
    assert login(auth, "alice", "pw") and auth.bcrypt_checks == 1


def test_cache_keys_do_not_hold_the_password(make_htpasswd: Callable[..., str]) -> None:
    auth = Authenticator(Table(make_htpasswd({"alice": "pw-0123456789"})))
    assert login(auth, "alice", "pw-0123456789")
    (key,) = auth._cache  # noqa: SLF001 - inspecting what is kept in memory
    assert b"pw-0123456789" not in key and b"alice" not in key and len(key) == 32


def test_failures_are_not_cached_and_wrong_password_misses(make_htpasswd: Callable[..., str]) -> None:
    auth = Authenticator(Table(make_htpasswd({"alice": "pw"})))
    assert not login(auth, "alice", "wrong") and not login(auth, "alice", "wrong")
    assert auth.bcrypt_checks == 2
    assert login(auth, "alice", "pw") and not auth.cached("alice", "pw2") and not auth.cached("alic", "epw")


def test_cache_expires(make_htpasswd: Callable[..., str]) -> None:
    clock = Clock()
    auth = Authenticator(Table(make_htpasswd({"alice": "pw"})), cache_ttl=60, clock=clock)
    assert login(auth, "alice", "pw")
    clock.now += 59
    assert auth.cached("alice", "pw")
    clock.now += 2
    assert not auth.cached("alice", "pw")


def test_htpasswd_reload_drops_the_cache(make_htpasswd: Callable[..., str]) -> None:
    source = Table(make_htpasswd({"alice": "pw"}))
    auth = Authenticator(source)
    assert login(auth, "alice", "pw") and auth.cached("alice", "pw")
    source.table = parse_htpasswd(make_htpasswd({"alice": "new-pw"}))
    assert not auth.cached("alice", "pw")
    assert not login(auth, "alice", "pw") and login(auth, "alice", "new-pw")


def test_unknown_user_still_costs_a_bcrypt_check(make_htpasswd: Callable[..., str]) -> None:
    auth = Authenticator(Table(make_htpasswd({"alice": "pw"})))
    # the decoy check uses alice's hash: even her password must not log in "mallory"
    assert not login(auth, "mallory", "pw") and auth.bcrypt_checks == 1
    assert not auth.cached("mallory", "pw")


def test_overlong_password_and_empty_file(make_htpasswd: Callable[..., str]) -> None:
    auth = Authenticator(Table(make_htpasswd({"alice": "pw"})))
    assert not login(auth, "alice", "x" * 73)
    assert not login(Authenticator(Table("")), "alice", "pw")


def test_cache_is_bounded(make_htpasswd: Callable[..., str]) -> None:
    users = {f"u{i}": "pw" for i in range(5)}
    auth = Authenticator(Table(make_htpasswd(users)), max_cached=3)
    for user in users:
        assert login(auth, user, "pw")
    assert len(auth._cache) == 3  # noqa: SLF001
    assert auth.cached("u4", "pw")
