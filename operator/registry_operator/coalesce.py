"""One reconcile loop per Registry: folds triggers that arrive meanwhile into one rerun, and retries failures.

A Registry is triggered by its own changes and by the events of every child; creating one Registry alone
produces a dozen child events. Without this the same Registry would be reconciled many times in parallel,
racing its own writes.

Modelled on kopf's `reactor/queueing.py`: a trigger is never dropped. A trigger that arrives while the
Registry is being reconciled marks it for one more run; a run that fails is always run again, after a capped
exponential backoff with jitter (so a refused write or an unreachable API server never becomes a hot loop),
and an urgent trigger (the user changed the spec) cuts the wait short. Each failure is logged once, when it
first appears or changes, not on every retry.

A trigger may be `light`: it asks only for what `refresh` can do (a Registry's status from its workloads'
progress, see `progress`). A run whose triggers since the last one were all light calls `refresh` first, and
`run` only when `refresh` says it could not do it; any other trigger, and every retry, means `run`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from . import metrics

log = logging.getLogger(__name__)


class Retry(Exception):
    """A reconcile that did what it could but must run again later (a write failed in a way that may pass).

    The message is for the log: it names objects and the API's reason, never secret values. `reason` is a
    problem reason (`ApplyFailed`, ...): the label of the failure in `registry_operator_reconcile_errors_total`.
    """

    def __init__(self, message: str, reason: str = "Retry") -> None:
        super().__init__(message)
        self.reason = reason


def backoff(failures: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `failures`-th consecutive failure: base * 2^(n-1), capped, minus up to half."""
    delay = min(cap, base * 2 ** min(failures - 1, 32))
    return delay * (1 - jitter() / 2)


@dataclass
class _State:
    again: asyncio.Event = field(default_factory=asyncio.Event)  # triggered while running or waiting
    urgent: asyncio.Event = field(default_factory=asyncio.Event)  # a trigger that must not wait out a backoff
    light: bool = True  # every trigger since the last run was light
    failures: int = 0
    last_error: str | None = None


class Coalescer:
    def __init__(
        self, run: Callable[[Hashable], Awaitable[object]], base: float = 0.5, cap: float = 60.0,
        kind: str = "Registry", drained: Callable[[], object] | None = None,
        refresh: Callable[[Hashable], Awaitable[bool]] | None = None,
    ) -> None:
        self._run = run
        self._refresh = refresh  # a cheaper run for light triggers: True when it did all that was asked
        self._drained = drained  # called when the last run finishes: the end of a burst
        self._kind = kind  # what the keys name, for the log
        self._base, self._cap = base, cap
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._states: dict[Hashable, _State] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    @property
    def busy(self) -> int:
        """Registries with a run in progress, pending, or waiting to retry."""
        return len(self._tasks)

    def trigger(self, key: Hashable, urgent: bool = False, light: bool = False) -> None:
        """Reconcile `key` soon: now if idle, else once more after the current run (or its backoff). `light`:
        `refresh` may be all it takes."""
        state = self._states.get(key)
        metrics.TRIGGERS.labels("started" if state is None else "coalesced").inc()
        if state is not None:
            state.light = state.light and light
            state.again.set()
            if urgent:
                state.urgent.set()
            return
        self._states[key] = _State(light=light)
        self._tasks[key] = asyncio.get_running_loop().create_task(self._loop(key), name=f"reconcile {key}")
        metrics.QUEUE_DEPTH.inc()

    def trigger_later(self, key: Hashable, delay: float) -> None:
        """Trigger `key` after `delay` seconds (something falls due with no event to announce it: a schedule
        tick, a timeout). One timer per key: a later call replaces the earlier one."""
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(delay, 0.0), self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    async def idle(self) -> None:
        """Wait until no Registry is being reconciled or waiting to retry (for tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _loop(self, key: Hashable) -> None:
        state = self._states[key]
        try:
            while True:
                state.again.clear()
                state.urgent.clear()
                light, state.light = state.light, True
                try:
                    if not (light and self._refresh is not None and await self._refresh(key)):
                        await self._run(key)
                except Exception as exc:  # noqa: BLE001 - every failure is retried, none may end the loop
                    state.light = False  # a retry is a full run
                    await self._wait_after_failure(key, state, exc)
                    continue
                if state.last_error is not None:
                    log.info("%s: reconciled after %d failed attempts", self._name(key), state.failures)
                state.failures, state.last_error = 0, None
                if not state.again.is_set():
                    return
        finally:
            del self._tasks[key], self._states[key]
            metrics.QUEUE_DEPTH.dec()
            if not self._tasks and self._drained is not None:
                self._drained()

    def _name(self, key: Hashable) -> str:
        return f"{self._kind} " + "/".join(key) if isinstance(key, tuple) else str(key)

    async def _wait_after_failure(self, key: Hashable, state: _State, exc: Exception) -> None:
        state.failures += 1
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, Retry) else str(exc)
        delay = backoff(state.failures, self._base, self._cap)
        if error != state.last_error:
            if isinstance(exc, Retry) or _is_api_trouble(exc):
                log.warning("%s: %s; retrying with backoff", self._name(key), error)
            else:
                log.exception("%s: reconcile failed; retrying with backoff", self._name(key))
            state.last_error = error
        else:
            log.debug("%s: still failing (attempt %d), next try in %.1fs", self._name(key), state.failures, delay)
        try:
            await asyncio.wait_for(state.urgent.wait(), delay)
        except TimeoutError:
            pass


def _is_api_trouble(exc: Exception) -> bool:
    """Errors of the API or the network, which need no traceback: the message says it all."""
    module = type(exc).__module__
    return module.startswith(("lightkube", "httpx", "httpcore", "ssl")) or isinstance(exc, OSError | TimeoutError)
