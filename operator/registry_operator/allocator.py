"""glibc's allocator, told to give memory back: the operator's footprint is its steady state, not its peak.

A restart lists every Registry and child at once and reconciles them all; the bodies, requests and rendered
objects of that burst are freed afterwards, but glibc keeps the freed pages in its heaps (one per thread that
ever allocated, up to 8 per core) and the process stays at its peak RSS for good. Two measures: few heaps
(`M_ARENA_MAX`), set before any thread starts, and `malloc_trim` once the work queue has drained, which
returns the free pages inside the heaps too. Elsewhere than glibc (musl, macOS) both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2  # the event loop's thread and the executor's bcrypt / key-generation threads sharing one


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def limit_arenas() -> None:
    """Cap glibc's heaps; only heaps created afterwards obey, so call it before any thread is started."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def trim() -> bool:
    """Return the free pages of every heap to the OS; True when some were."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


class Trimmer:
    """Trims soon after a burst of work ends, at most once per `interval`: a trim walks every heap (tens of
    milliseconds at a few hundred MiB), and at rest single resyncs finish all the time."""

    def __init__(self, delay: float = 2.0, interval: float = 30.0) -> None:
        self._delay, self._interval = delay, interval  # delay: kopf's per-object workers let go of their bodies
        self._last = -interval
        self._timer: asyncio.TimerHandle | None = None

    def request(self) -> None:
        """Trim `delay` seconds from now, or once `interval` has passed since the last trim."""
        if self._timer is not None:
            return
        wait = max(self._delay, self._last + self._interval - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(wait, self._trim)

    def _trim(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        trim()
