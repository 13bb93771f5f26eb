"""Password checks against the htpasswd file, with a short-lived cache of successes.

bcrypt is deliberately slow (tens of ms at cost 10) and docker asks for a token on nearly every
request, so a successful check is remembered for ``cache_ttl`` seconds. The cache key is an HMAC
of user and password under a random per-process key: neither plaintext nor a fast unsalted hash
of the password is kept in memory. Any reload of the htpasswd file drops the cache, so a changed
password or a removed user takes effect at once. bcrypt runs in a thread pool to keep the event
loop responsive, and unknown users still cost one bcrypt check so timing does not reveal which
users exist.
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

_MAX_PASSWORD_BYTES = 72  # bcrypt ignores the rest; the operator refuses longer passwords


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


class Authenticator:
    """Verifies credentials; ``htpasswd`` is called per check so reloads are seen immediately."""

    def __init__(
        self,
        htpasswd: Callable[[], Htpasswd],
        *,
        cache_ttl: float = 60.0,
        max_cached: int = 10_000,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._htpasswd = htpasswd
        self.cache_ttl = cache_ttl
        self.max_cached = max_cached
        self._executor = executor or ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="bcrypt"
        )
        self._clock = clock
        self._hmac_key = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._cache_source: Htpasswd | None = None
        self.bcrypt_checks = 0  # exposed for tests and benchmarks

    def _cache_key(self, user: str, password: bytes) -> bytes:
        name = user.encode()
        message = len(name).to_bytes(4, "big") + name + password
        return hmac.new(self._hmac_key, message, hashlib.sha256).digest()

    def cached(self, user: str, password: str) -> bool:
        """True if these credentials were verified recently against the current htpasswd file."""
        table = self._htpasswd()
        if table is not self._cache_source:
            self._cache.clear()
            self._cache_source = table
        key = self._cache_key(user, password.encode())
        expiry = self._cache.get(key)
        if expiry is None:
            return False
        if expiry < self._clock():
            del self._cache[key]
            return False
        return True

    async def verify(self, user: str, password: str) -> bool:
        """Full check (bcrypt in the executor) and cache the result when it succeeds."""
        table = self._htpasswd()
        secret = password.encode()
        hashed = table.hashes.get(user)
        decoy = hashed is None
        if decoy:  # spend the same time as for a real user
            hashed = next(iter(table.hashes.values()), None)
        if hashed is None or len(secret) > _MAX_PASSWORD_BYTES:
            return False
        self.bcrypt_checks += 1
        ok = await asyncio.get_running_loop().run_in_executor(self._executor, _check, secret, hashed)
        if not ok or decoy:
            return False
        if table is self._htpasswd():  # not reloaded meanwhile
            self._remember(self._cache_key(user, secret))
        return True

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        if len(self._cache) >= self.max_cached:
            self._cache = {k: exp for k, exp in self._cache.items() if exp >= now}
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = now + self.cache_ttl

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
