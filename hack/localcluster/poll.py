"""The one way scripts, fixtures and tests wait for something: poll a check until it returns something truthy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GaveUp(AssertionError):
    """Raised by a check to end the wait at once: what it waits for can no longer happen (a process exited)."""


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    error: type[Exception] = AssertionError,
) -> T:
    """Call ``check`` until it returns something truthy and return that; exceptions count as "not yet",
    except ``GaveUp``, which is raised at once.

    On timeout raise ``error`` (AssertionError for tests, ClusterError for the control plane) naming ``what``
    and the last exception or falsy value seen, which is usually the reason.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except GaveUp:
            raise
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error
            last = e
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
