"""Values loaded from mounted files and reloaded when a file's identity changes.

Kubernetes updates Secret and ConfigMap volumes by writing a new timestamped directory and swapping
the ``..data`` symlink, so each visible file resolves to a new inode. ``os.stat`` follows the
links; comparing (device, inode, mtime, size) on each access costs microseconds and catches both
that swap and in-place edits. A failed reload keeps the last good value, so a half-written or
broken file never takes the service down; it is retried once the files change again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Identity = tuple[tuple[int, int, int, int] | None, ...]


def file_identity(paths: Sequence[str]) -> Identity:
    """(device, inode, mtime, size) per path, ``None`` for a missing file."""
    result = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            result.append(None)
        else:
            result.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


class FileBacked(Generic[T]):
    """A value built by ``load`` from ``paths``; the first load happens now and must succeed."""

    def __init__(self, paths: Sequence[str], load: Callable[[], T], name: str) -> None:
        self._paths = tuple(paths)
        self._load = load
        self._name = name
        self._seen = file_identity(self._paths)
        self._value = load()

    def get(self) -> T:
        """Return the current value, reloading first if any file changed since the last attempt."""
        identity = file_identity(self._paths)
        if identity != self._seen:
            self._seen = identity
            try:
                self._value = self._load()
            except Exception as exc:  # noqa: BLE001 - any failure keeps serving the last good value
                log.error("reloading %s failed, keeping the previous one: %s", self._name, exc)
            else:
                log.info("reloaded %s", self._name)
        return self._value
