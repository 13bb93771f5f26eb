"""The registry's htpasswd file: bcrypt lines, kept stable while passwords are unchanged.

The registry re-reads the file whenever its mtime changes and one malformed line locks out every user, so the
file is always written whole and valid. A fresh bcrypt hash has a fresh salt: re-hashing on every reconcile
would rewrite the Secret each time, so an existing hash is kept while it still verifies the password.

Verifying costs a bcrypt round too (about 50 ms at cost 10), so next to each hash we keep a fingerprint: an
HMAC-SHA256 of user and password under a random per-Registry key. A password whose fingerprint matches is
unchanged, and its hash is kept without any bcrypt work, in this process or the next one (a restart, a resync
of a thousand Registries). The key lives in a different Secret than the fingerprints and no pod mounts either;
whoever can read both can already read the generated passwords and the referenced password Secrets, so the
fingerprints reveal nothing new.

bcrypt is called directly: passlib 1.7.4 fails with bcrypt 5.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping

import bcrypt

COST = 10  # each authenticated request pays one check: cost 10 is ~50 ms, cost 12 ~190 ms
# Passwords the operator generates are 192 random bits: no hash cost makes them easier or harder to guess, so
# they get the minimum and the registry's per-request check costs about 1 ms instead of 50.
GENERATED_COST = 4
MAX_PASSWORD_BYTES = 72  # bcrypt ignores what follows; refuse rather than silently truncate


class PasswordError(ValueError):
    """A password the registry could not use; the message never contains the password."""


def validate_user(user: str) -> None:
    """A user name must fit an htpasswd line and an HTTP Basic credential: no ':', no whitespace or controls."""
    if not user or ":" in user or any(c.isspace() or not c.isprintable() for c in user):
        raise PasswordError(f"user name {user!r} is empty or contains ':', whitespace or control characters")


def validate(user: str, password: str) -> None:
    validate_user(user)
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


def fingerprint(key: bytes, user: str, password: str) -> str:
    return base64.b64encode(hmac.new(key, f"{user}\0{password}".encode(), hashlib.sha256).digest()).decode()


def _verifies(password: str, digest: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), digest.encode())
    except ValueError:  # malformed hash: treat as stale
        return False


def reconcile(
    passwords: Mapping[str, str],
    existing: Mapping[str, str],
    fingerprints: Mapping[str, str],
    key: bytes,
    costs: Mapping[str, int] | None = None,
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(user, hash) lines for `passwords` in their order, and their fingerprints.

    An existing hash is kept when its fingerprint matches and it has the wanted cost (`costs`, default `COST`);
    without a fingerprint (a file from elsewhere) it is kept if bcrypt verifies it, once, and then fingerprinted.
    """
    lines, prints = [], {}
    for user, password in passwords.items():
        digest = existing.get(user)
        cost = (costs or {}).get(user, COST)
        mark = fingerprint(key, user, password)
        known = hmac.compare_digest(fingerprints.get(user, ""), mark)
        if digest is None or digest[4:7] != f"{cost:02d}$" or not (known or _verifies(password, digest)):
            digest = hash_password(password, cost)
        lines.append((user, digest))
        prints[user] = mark
    return lines, prints
