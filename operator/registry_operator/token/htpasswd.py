"""Reading bcrypt htpasswd files, the same format the registry's htpasswd auth uses.

Unlike the registry, which locks out every user when one line is malformed, a bad line here only
drops that entry (with a warning naming the line number, never its content, which holds a hash).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_BCRYPT = re.compile(rb"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class Htpasswd:
    """User name -> bcrypt hash. Identity (``is``) changes on every reload; caches key off that."""

    hashes: Mapping[str, bytes] = field(default_factory=dict)


def parse_htpasswd(text: str, source: str = "htpasswd") -> Htpasswd:
    """Parse ``user:hash`` lines; blank lines and ``#`` comments are skipped, first entry wins."""
    hashes: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        encoded = hashed.encode("ascii", "replace")
        if not sep or not user or not _BCRYPT.match(encoded):
            log.warning("%s line %d: not a user:bcrypt-hash entry, skipped", source, number)
            continue
        hashes.setdefault(user, encoded)
    return Htpasswd(hashes)


def load_htpasswd(path: str | Path) -> Htpasswd:
    """Read the mounted file; a missing file is an error (callers keep the last good copy)."""
    return parse_htpasswd(Path(path).read_text(encoding="utf-8"), source=str(path))
