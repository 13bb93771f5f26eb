"""Slowing down password guessing, per user name and per client address.

After ``free_failures`` failures a key's attempts are spaced ``base_delay * 2**n`` apart (capped at
``max_delay``). Attempts reserve the next slot *before* the password is checked, so parallel
guesses are serialized instead of all passing the gate together, and the delay applies whatever
the outcome (a delay only on failures would let a client give up early and infer a failure). A
client that would have to wait more than ``max_wait`` is refused outright (HTTP 429) rather than
holding a connection open. Keys are forgotten ``forget_after`` seconds after their last failure;
a success clears the user's key but not the address's, so one valid account cannot be used to
reset the counter of an address that is spraying guesses.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    next_slot: float = 0.0
    last_failure: float = 0.0


class TooManyAttempts(Exception):
    """The wait for this key exceeds ``max_wait``; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class FailureThrottle:
    """In-memory and per process: replicas each slow a guesser down independently."""

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

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.last_failure > self.forget_after:
            del self._entries[key]
            return None
        return entry

    def reserve(self, keys: Iterable[str]) -> float:
        """Claim the next attempt slot for all ``keys``; returns how long to wait before checking."""
        now = self._clock()
        start = now
        live = [(entry, self.delay(entry.failures)) for key in keys if (entry := self._live(key, now))]
        for entry, delay in live:
            if delay:
                start = max(start, entry.next_slot)
        if start - now > self.max_wait:
            raise TooManyAttempts(start - now)
        for entry, delay in live:
            if delay:
                entry.next_slot = start + delay
        return start - now

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            entry = self._live(key, now) or _Entry()
            entry.failures += 1
            entry.last_failure = now
            entry.next_slot = max(entry.next_slot, now + self.delay(entry.failures))
            self._entries[key] = entry
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._entries.pop(key, None)
