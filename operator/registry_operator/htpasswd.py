"""The registry's htpasswd file: bcrypt lines, kept stable while passwords are unchanged.

The registry re-reads the file whenever its mtime changes and one malformed line locks out every user, so the
file is always written whole and valid. A fresh bcrypt hash has a fresh salt: re-hashing on every reconcile
would rewrite the Secret each time, so an existing hash is kept while it still verifies the password.

Verifying costs a bcrypt round too (about 50 ms at cost 10). `Verifier` remembers successful checks in memory,
keyed by an HMAC under a per-process random key (never the plaintext), so a resync of a settled Registry does no
bcrypt work at all.

bcrypt is called directly: passlib 1.7.4 fails with bcrypt 5.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping

import bcrypt

COST = 10  # each authenticated request pays one check: cost 10 is ~50 ms, cost 12 ~190 ms
MAX_PASSWORD_BYTES = 72  # bcrypt ignores what follows; refuse rather than silently truncate


class PasswordError(ValueError):
    """A password the registry could not use; the message never contains the password."""


def validate(user: str, password: str) -> None:
    if ":" in user or not user:
        raise PasswordError(f"user name {user!r} is empty or contains ':'")
    if not password:
        raise PasswordError(f"the password of user {user!r} is empty")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"the password of user {user!r} is longer than {MAX_PASSWORD_BYTES} bytes")
    if "\n" in password or "\r" in password:
        raise PasswordError(f"the password of user {user!r} contains a line break")


def hash_password(password: str, cost: int = COST) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def parse(text: str, on_bad_line: Callable[[int], None] | None = None) -> dict[str, str]:
    """user -> hash of every well-formed `user:bcrypt` line (first one wins); blank lines and comments skipped.

    Malformed lines are dropped, reported by number only (their content holds a hash); the operator always
    rewrites the whole file, and the token service keeps serving the users that are still well-formed.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, digest = line.partition(":")
        if not (sep and user and _BCRYPT.match(digest)):
            if on_bad_line:
                on_bad_line(number)
            continue
        out.setdefault(user, digest)
    return out


def render(hashes: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{user}:{digest}\n" for user, digest in hashes)


class Verifier:
    """bcrypt checks with a memory of the ones that succeeded."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._known: set[bytes] = set()

    def _fingerprint(self, user: str, digest: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{digest}\0{password}".encode(), hashlib.sha256).digest()

    def verify(self, user: str, digest: str, password: str) -> bool:
        fingerprint = self._fingerprint(user, digest, password)
        if fingerprint in self._known:
            return True
        try:
            ok = bcrypt.checkpw(password.encode(), digest.encode())
        except ValueError:  # malformed hash: treat as stale
            return False
        if ok:
            self._known.add(fingerprint)
        return ok

    def remember(self, user: str, digest: str, password: str) -> None:
        """Record a hash we just made, so the next reconcile does not check it again."""
        self._known.add(self._fingerprint(user, digest, password))


def reconcile(
    passwords: Mapping[str, str], existing: Mapping[str, str], verifier: Verifier, cost: int = COST
) -> list[tuple[str, str]]:
    """The (user, hash) lines for `passwords`, in their order, keeping every existing hash that still verifies."""
    lines = []
    for user, password in passwords.items():
        digest = existing.get(user)
        if digest is None or not verifier.verify(user, digest, password):
            digest = hash_password(password, cost)
            verifier.remember(user, digest, password)
        lines.append((user, digest))
    return lines
