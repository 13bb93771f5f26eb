"""htpasswd parsing: bcrypt variants accepted, malformed lines dropped without locking others out."""

import logging
from collections.abc import Callable

import bcrypt
import pytest

from registry_operator.token.htpasswd import parse_htpasswd


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_variants(prefix: str, make_htpasswd: Callable[..., str]) -> None:
    table = parse_htpasswd(make_htpasswd({"alice": "pw"}, prefix))
    hashed = table.hashes["alice"]
    assert hashed.startswith(prefix.encode()) and bcrypt.checkpw(b"pw", hashed)


def test_malformed_lines_are_skipped_and_logged_without_content(
    make_htpasswd: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    good = make_htpasswd({"alice": "pw", "bob": "pw2"})
    text = "\n".join(
        [
            "# comment",
            "",
            "nocolon",
            "md5user:$apr1$abc$abcdefghijklmnopqrstuv",
            "shortbcrypt:$2b$04$tooshort",
            ":$2b$04$" + "a" * 53,
            good,
            "alice:$2b$04$" + "b" * 53,  # duplicate: the first entry wins
        ]
    )
    with caplog.at_level(logging.WARNING):
        table = parse_htpasswd(text, source="test")
    assert sorted(table.hashes) == ["alice", "bob"]
    assert bcrypt.checkpw(b"pw", table.hashes["alice"])
    assert [r.getMessage() for r in caplog.records] == [
        f"test line {n}: not a user:bcrypt-hash entry, skipped" for n in (3, 4, 5, 6)
    ]
    assert "apr1" not in caplog.text


def test_crlf_and_surrounding_whitespace(make_htpasswd: Callable[..., str]) -> None:
    line = make_htpasswd({"alice": "pw"}).strip()
    assert "alice" in parse_htpasswd(f"  {line}  \r\n").hashes


def test_empty_file() -> None:
    assert parse_htpasswd("").hashes == {}
