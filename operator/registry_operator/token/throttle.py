"""Slowing down password guessing per (user, client address), with a failure budget per address.

Why the pair: many clients share one address behind SNAT or an Ingress, so one client's failures
must not slow everybody else's logins from that address; and a record per user alone would let
anyone lock a user out from anywhere. Why the budget per address: without it one address could
try a few passwords each for an unlimited number of user names.

Pairs: after ``free_failures`` failures a pair's attempts are spaced ``base_delay * 2**n`` apart
(capped at ``max_delay``). An attempt reserves its slot *before* the password is checked, so the
delay applies whatever the outcome (a delay on failures only would let a client give up early and
infer a failure); attempts still in flight count like failures, so parallel guesses are serialized
from the start (identical credentials are merged before they get here, so parallel pulls with one
pull secret are not penalized). A client that would wait more than ``max_wait`` is refused (HTTP
429) instead of holding a connection open. A success clears the pair.

Addresses: each failure raises the address's level by one and the level drains at
``address_refill`` per second. An attempt is refused while level plus attempts in flight from the
address would exceed ``address_burst``; it is never delayed, so logins of different users from one
address do not queue. A success does not lower the level, so one valid account cannot launder an
address's guesses. Credentials that recently succeeded are answered from the authenticator's cache
before the throttle, so a spraying neighbour does not stop users who are already logged in. IPv6
clients are grouped by /64 (one host usually holds a whole /64).

Memory is bounded whatever the input: records are created only when an attempt fails (the in-flight
counts exist only while checks run, so they are bounded by concurrent requests), a user name is kept
as a keyed 16-byte digest, records are pruned oldest-first ``forget_after`` seconds after their last
failure, and each table holds at most ``max_entries`` records (the oldest is evicted first).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

PairKey = tuple[bytes, str]
K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class _Pair:
    failures: int = 0
    next_slot: float = 0.0
    last_failure: float = 0.0


@dataclass(slots=True)
class _Address:
    level: float = 0.0
    last_failure: float = 0.0

    def level_at(self, now: float, refill: float) -> float:
        return max(0.0, self.level - (now - self.last_failure) * refill)


@dataclass(slots=True)
class _InFlight:
    count: int = 0
    next_slot: float = 0.0


class TooManyAttempts(Exception):
    """The wait for this pair exceeds ``max_wait``, or the address is over budget; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after


def address_group(address: str) -> str:
    """The unit the address budget counts: the IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureThrottle:
    """In memory and per process: replicas each slow a guesser down independently."""

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 0.25,
        max_delay: float = 8.0,
        max_wait: float = 30.0,
        forget_after: float = 600.0,
        address_burst: int = 100,
        address_refill: float = 0.5,
        max_entries: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_wait = max_wait
        self.forget_after = forget_after
        self.address_burst = address_burst
        self.address_refill = address_refill
        self.max_entries = max_entries
        self._clock = clock
        # an address is remembered at least until its level has drained
        self._address_memory = max(forget_after, address_burst / address_refill)
        self._digest_key = secrets.token_bytes(16)
        self._pairs: OrderedDict[PairKey, _Pair] = OrderedDict()  # oldest last failure first
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._pair_flight: dict[PairKey, _InFlight] = {}
        self._address_flight: dict[str, int] = {}

    def records(self) -> int:
        """Records held (pairs and addresses), not counting attempts in flight; for tests and metrics."""
        return len(self._pairs) + len(self._addresses)

    def delay(self, failures: int) -> float:
        """Spacing between a pair's attempts after ``failures`` consecutive failures."""
        if failures < self.free_failures:
            return 0.0
        return min(self.base_delay * 2 ** (failures - self.free_failures), self.max_delay)

    def _key(self, user: str, address: str) -> PairKey:
        name = user.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(name, key=self._digest_key, digest_size=16).digest(), address_group(address)

    def _prune(self, now: float) -> None:
        """Forget records whose last failure is old: both tables are ordered by last failure."""
        while self._pairs and now - next(iter(self._pairs.values())).last_failure > self.forget_after:
            self._pairs.popitem(last=False)
        while self._addresses and now - next(iter(self._addresses.values())).last_failure > self._address_memory:
            self._addresses.popitem(last=False)

    def reserve(self, user: str, address: str) -> float:
        """Claim the pair's next attempt slot; returns seconds to wait before checking the password.

        Raises :class:`TooManyAttempts` without reserving anything. Every successful call must be
        followed by one :meth:`settle` with the same arguments.
        """
        now = self._clock()
        self._prune(now)
        key = self._key(user, address)
        group = key[1]
        flying = self._address_flight.get(group, 0)
        record = self._addresses.get(group)
        level = record.level_at(now, self.address_refill) if record else 0.0
        excess = level + flying + 1 - self.address_burst
        if excess > 0:
            raise TooManyAttempts(excess / self.address_refill)
        pair = self._pairs.get(key)
        flight = self._pair_flight.get(key) or _InFlight()
        failures = pair.failures if pair else 0
        start = max(now, pair.next_slot if pair else 0.0, flight.next_slot)
        if start - now > self.max_wait:
            raise TooManyAttempts(start - now)
        flight.count += 1
        flight.next_slot = start + self.delay(failures + flight.count)
        self._pair_flight[key] = flight
        self._address_flight[group] = flying + 1
        return start - now

    def settle(self, user: str, address: str, ok: bool) -> None:
        """Record the outcome of a reserved attempt (an abandoned attempt counts as a failure)."""
        now = self._clock()
        key = self._key(user, address)
        group = key[1]
        flight = self._pair_flight[key]
        flight.count -= 1
        if not flight.count:
            del self._pair_flight[key]
        if flying := self._address_flight[group] - 1:
            self._address_flight[group] = flying
        else:
            del self._address_flight[group]
        if ok:
            self._pairs.pop(key, None)
            flight.next_slot = 0.0
            return
        pair = self._pairs.pop(key, None) or _Pair()
        pair.failures += 1
        pair.last_failure = now
        pair.next_slot = max(pair.next_slot, now + self.delay(pair.failures))
        self._insert(self._pairs, key, pair)
        record = self._addresses.pop(group, None) or _Address()
        record.level = record.level_at(now, self.address_refill) + 1
        record.last_failure = now
        self._insert(self._addresses, group, record)

    def _insert(self, table: OrderedDict[K, V], key: K, value: V) -> None:
        """Append as the newest record, evicting the oldest beyond ``max_entries``."""
        table[key] = value
        while len(table) > self.max_entries:
            table.popitem(last=False)
