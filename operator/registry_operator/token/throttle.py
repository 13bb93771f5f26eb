"""Slowing down password guessing, per user name and per client address.

After ``free_failures`` failures a key's attempts are spaced ``base_delay * 2**n`` apart (capped at
``max_delay``). An attempt reserves its slot *before* the password is checked, so the delay
applies whatever the outcome (a delay on failures only would let a client give up early and infer
a failure), and a client that would wait more than ``max_wait`` is refused (HTTP 429) instead of
holding a connection open.

For a user name, attempts still in flight count like failures, so parallel guesses against one
account are serialized from the start. (Identical credentials are merged before they get here,
so parallel pulls with one pull secret are not penalized.) For an address only recorded failures
count: many clients may share an address behind SNAT, and their concurrent logins must not queue.

A success clears the user's record but not the address's, so one valid account cannot reset the
counter of an address that sprays guesses. Records are forgotten ``forget_after`` seconds after the
last failure, and their number is capped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    pending: int = 0
    next_slot: float = 0.0
    last_failure: float = 0.0


class TooManyAttempts(Exception):
    """The wait for this key exceeds ``max_wait``; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after


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
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_wait = max_wait
        self.forget_after = forget_after
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def delay(self, failures: int) -> float:
        """Spacing between attempts after ``failures`` consecutive failures."""
        if failures < self.free_failures:
            return 0.0
        return min(self.base_delay * 2 ** (failures - self.free_failures), self.max_delay)

    def _entry(self, key: str, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or (not entry.pending and now - entry.last_failure > self.forget_after):
            entry = self._entries[key] = _Entry()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def _drop_if_clean(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and not entry.failures and not entry.pending:
            del self._entries[key]

    def reserve(self, user: str, address: str) -> float:
        """Claim the next attempt slot; returns seconds to wait before checking the password.

        Every successful call must be followed by one :meth:`settle`.
        """
        now = self._clock()
        user_entry = self._entry(f"user:{user}", now)
        addr_entry = self._entry(f"addr:{address}", now)
        user_start = max(now, user_entry.next_slot)
        start = max(user_start, addr_entry.next_slot)
        if start - now > self.max_wait:
            raise TooManyAttempts(start - now)
        # each key's queue advances on its own: a penalized address does not hold up the user elsewhere
        user_entry.next_slot = user_start + self.delay(user_entry.failures + user_entry.pending + 1)
        if addr_delay := self.delay(addr_entry.failures):
            addr_entry.next_slot = start + addr_delay
        user_entry.pending += 1
        return start - now

    def settle(self, user: str, address: str, ok: bool) -> None:
        """Record the outcome of a reserved attempt (an abandoned attempt counts as a failure)."""
        now = self._clock()
        user_key, addr_key = f"user:{user}", f"addr:{address}"
        user_entry = self._entries.get(user_key)
        if user_entry is not None:
            user_entry.pending = max(0, user_entry.pending - 1)
        if ok:
            if user_entry is not None:
                user_entry.failures, user_entry.next_slot = 0, 0.0
            self._drop_if_clean(user_key)
            self._drop_if_clean(addr_key)
            return
        for key in (user_key, addr_key):
            entry = self._entry(key, now)
            entry.failures += 1
            entry.last_failure = now
            entry.next_slot = max(entry.next_slot, now + self.delay(entry.failures))
            self._entries.move_to_end(key)
