"""Logins against the htpasswd file: a cache of recent successes, merging of identical concurrent
attempts, the failure throttle, and bcrypt in a thread pool.

bcrypt is deliberately slow (tens of ms at cost 10) and docker asks for a token on nearly every
request, so a successful check is remembered for ``cache_ttl`` seconds. The cache key is an HMAC
of user and password under a random per-process key: neither the plaintext nor a fast unsalted
hash of the password is kept. Any reload of the htpasswd file drops the cache, so a changed
password or a removed user takes effect at once. Concurrent logins with identical credentials
(parallel layer pulls, many nodes with one pull secret) share one check. Unknown users still cost
as much as the costliest wrong password (see :func:`_check_as_costly`), so timing does not reveal
which users exist. Names and passwords longer than any that can exist are refused before any
other work, so they cost neither hashing nor a throttle record.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import bcrypt

from .htpasswd import Htpasswd
from .limits import MAX_PASSWORD_BYTES, MAX_USER_BYTES
from .throttle import FailureThrottle

_BCRYPT_ALPHABET = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_MIN_COST, _MAX_COST = 4, 31  # what bcrypt accepts


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost of a ``$2?$NN$...`` hash, ``None`` if it is not one bcrypt would run."""
    parts = hashed.split(b"$")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    cost = int(parts[2])
    return cost if _MIN_COST <= cost <= _MAX_COST else None


def make_decoy(cost: int) -> bytes:
    """A well-formed bcrypt hash at ``cost`` that no password matches (a fresh salt, a random digest).

    Checking a password against it costs exactly what a real hash of that cost does, while making
    it costs nothing: no hashing, so it can be rebuilt on every htpasswd reload.
    """
    digest = bytes(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(rounds=cost) + digest


def _check_as_costly(password: bytes, hashed: bytes | None, decoy: bytes, top_cost: int) -> bool:
    """Check ``password``; a failure always includes one bcrypt run at the highest cost in use.

    An unknown user is checked against the decoy, so it costs what a known user with a wrong
    password costs. A known user whose hash is cheaper than the costliest (generated passwords
    are hashed at cost 4, chosen ones at 10) also pays a decoy run after a failure; otherwise a
    fast failure would tell that the name exists and has a generated password. The cheap run adds
    ``2**(cheap - top)`` of the costly one (1/64 for cost 4 against 10), inside the jitter of a
    server that shares its cores.
    """
    if hashed is None:
        _check(password, decoy)
        return False
    if _check(password, hashed):
        return True
    if (bcrypt_cost(hashed) or 0) < top_cost:
        _check(password, decoy)
    return False


def _encode(text: str) -> bytes:
    """UTF-8 that never raises: a lone surrogate from a hostile client is kept, not an error."""
    return text.encode("utf-8", "surrogatepass")


class Authenticator:
    """Verifies credentials; ``htpasswd`` is called per login so reloads are seen immediately."""

    def __init__(
        self,
        htpasswd: Callable[[], Htpasswd],
        throttle: FailureThrottle,
        *,
        cache_ttl: float = 60.0,
        max_cached: int = 10_000,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._htpasswd = htpasswd
        self._throttle = throttle
        self.cache_ttl = cache_ttl
        self.max_cached = max_cached
        self._executor = executor or ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="bcrypt")
        self._clock = clock
        self._hmac_key = secrets.token_bytes(32)
        self._log_key = secrets.token_bytes(32)
        self._decoy: tuple[Htpasswd, bytes, int] | None = None
        self._cache: dict[bytes, float] = {}
        self._cache_source: Htpasswd | None = None
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}
        self.bcrypt_checks = 0  # exposed for tests and benchmarks

    def _cache_key(self, name: bytes, password: bytes) -> bytes:
        message = len(name).to_bytes(4, "big") + name + password
        return hmac.new(self._hmac_key, message, hashlib.sha256).digest()

    def _sync(self, table: Htpasswd) -> None:
        """Drop the cache when the htpasswd file was reloaded since it was filled."""
        if table is not self._cache_source:
            self._cache.clear()
            self._cache_source = table

    def _cached(self, key: bytes) -> bool:
        expiry = self._cache.get(key)
        if expiry is not None and expiry < self._clock():
            del self._cache[key]
            return False
        return expiry is not None

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        if len(self._cache) >= self.max_cached:
            self._cache = {k: exp for k, exp in self._cache.items() if exp >= now}
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = now + self.cache_ttl

    async def login(self, user: str, password: str, address: str) -> bool:
        """True if the credentials are valid; raises ``TooManyAttempts`` when throttled."""
        name, secret = _encode(user), _encode(password)
        if not name or len(name) > MAX_USER_BYTES or len(secret) > MAX_PASSWORD_BYTES:
            return False  # such credentials cannot exist: no hashing, no throttle record
        key = self._cache_key(name, secret)
        self._sync(self._htpasswd())
        if self._cached(key):
            return True
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._throttled_check(key, user, secret, address))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)  # a client hanging up does not abort the shared check

    async def _throttled_check(self, key: bytes, user: str, secret: bytes, address: str) -> bool:
        wait = self._throttle.reserve(user, address)
        ok = False
        try:
            if wait:
                await asyncio.sleep(wait)
            table = self._htpasswd()
            ok = await self._verify(table, user, secret)
            current = self._htpasswd()
            self._sync(current)
            if ok and table is current:  # not reloaded while bcrypt ran
                self._remember(key)
            return ok
        finally:
            self._throttle.settle(user, address, ok)

    def _decoy_for(self, table: Htpasswd) -> tuple[bytes, int] | None:
        """The decoy hash at the highest cost in ``table`` and that cost; ``None`` if no hash is usable."""
        if self._decoy is None or self._decoy[0] is not table:
            top = max(filter(None, map(bcrypt_cost, table.hashes.values())), default=None)
            if top is None:
                return None
            self._decoy = (table, make_decoy(top), top)
        return self._decoy[1], self._decoy[2]

    async def _verify(self, table: Htpasswd, user: str, secret: bytes) -> bool:
        decoy = self._decoy_for(table)
        if decoy is None:  # nobody can log in, so there is nothing to hide
            return False
        self.bcrypt_checks += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _check_as_costly, secret, table.hashes.get(user), *decoy)

    def describe(self, user: str) -> str:
        """How a login's user name appears in logs.

        A failed login's name may be a password pasted into the wrong field, so a name that is not
        in the htpasswd file is shown only as a keyed hash (the key lives and dies with the process:
        repeats can be correlated, the name cannot be recovered). Names of existing users are not
        secret (they are in the Registry's spec) and are shown, escaped.
        """
        name = _encode(user)
        if len(name) > MAX_USER_BYTES:
            return f"an over-long user name ({len(name)} bytes)"
        if user in self._htpasswd().hashes:
            return f"user {user!r}"
        return "unknown user #" + hmac.new(self._log_key, name, hashlib.sha256).hexdigest()[:12]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
