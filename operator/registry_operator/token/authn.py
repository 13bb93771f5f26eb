"""Logins against the htpasswd file: a cache of recent successes, merging of identical concurrent
attempts, the failure throttle, and bcrypt in a thread pool.

bcrypt is deliberately slow (tens of ms at cost 10) and docker asks for a token on nearly every
request, so a successful check is remembered for ``cache_ttl`` seconds. The cache key is an HMAC
of user and password under a random per-process key: neither the plaintext nor a fast unsalted
hash of the password is kept. Any reload of the htpasswd file drops the cache, so a changed
password or a removed user takes effect at once. Concurrent logins with identical credentials
(parallel layer pulls, many nodes with one pull secret) share one check. Unknown users still cost
one bcrypt check so timing does not reveal which users exist.
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
from .throttle import FailureThrottle

_MAX_PASSWORD_BYTES = 72  # bcrypt ignores the rest; the operator refuses longer passwords


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


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
        self._cache: dict[bytes, float] = {}
        self._cache_source: Htpasswd | None = None
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}
        self.bcrypt_checks = 0  # exposed for tests and benchmarks

    def _cache_key(self, user: str, password: bytes) -> bytes:
        name = user.encode()
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
        secret = password.encode()
        key = self._cache_key(user, secret)
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

    async def _verify(self, table: Htpasswd, user: str, secret: bytes) -> bool:
        hashed = table.hashes.get(user)
        decoy = hashed is None
        if decoy:  # spend the same time as for a real user
            hashed = next(iter(table.hashes.values()), None)
        if hashed is None or len(secret) > _MAX_PASSWORD_BYTES:
            return False
        self.bcrypt_checks += 1
        ok = await asyncio.get_running_loop().run_in_executor(self._executor, _check, secret, hashed)
        return ok and not decoy

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
