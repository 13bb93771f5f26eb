"""Reading bcrypt htpasswd files, the same format the registry's htpasswd auth uses.

Unlike the registry, which locks out every user when one line is malformed, a bad line here only
drops that entry (with a warning naming the line number, never its content, which holds a hash).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import htpasswd

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Htpasswd:
    """User name -> bcrypt hash. Identity (``is``) changes on every reload; caches key off that."""

    hashes: Mapping[str, bytes] = field(default_factory=dict)


def parse_htpasswd(text: str, source: str = "htpasswd") -> Htpasswd:
    """Parse the file the operator renders (same parser as the operator's, first entry wins)."""

    def bad(number: int) -> None:
        log.warning("%s line %d: not a user:bcrypt-hash entry, skipped", source, number)

    return Htpasswd({user: digest.encode() for user, digest in htpasswd.parse(text, bad).items()})


def load_htpasswd(path: str | Path) -> Htpasswd:
    """Read the mounted file; a missing file is an error (callers keep the last good copy)."""
    return parse_htpasswd(Path(path).read_text(encoding="utf-8"), source=str(path))
