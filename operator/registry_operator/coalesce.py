"""Run at most one reconcile per Registry at a time, and fold the triggers that arrive meanwhile into one rerun.

A Registry is triggered by its own changes and by the events of every child; creating one Registry alone
produces a dozen child events. kopf runs each object's handlers concurrently with other objects', so without
this the same Registry would be reconciled many times in parallel, racing its own writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable


class Coalescer:
    def __init__(self, run: Callable[[Hashable], Awaitable[None]]) -> None:
        self._run = run
        self._pending: dict[Hashable, bool] = {}  # key -> triggered again while running

    @property
    def busy(self) -> int:
        return len(self._pending)

    async def trigger(self, key: Hashable) -> None:
        """Reconcile `key` now, or, if it is already running, once more right after."""
        if key in self._pending:
            self._pending[key] = True
            return
        self._pending[key] = False
        try:
            while True:
                await self._run(key)
                if not self._pending[key]:
                    return
                self._pending[key] = False
        finally:
            del self._pending[key]
