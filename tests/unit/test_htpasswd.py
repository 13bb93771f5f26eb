"""htpasswd: format, stability, refusals."""

import bcrypt
import pytest

from registry_operator import htpasswd


def test_lines_are_bcrypt_and_verify():
    lines = htpasswd.reconcile({"alice": "pw-a", "bob": "pw-b"}, {}, htpasswd.Verifier(), cost=4)
    text = htpasswd.render(lines)
    assert text.endswith("\n") and text.count("\n") == 2
    parsed = htpasswd.parse(text)
    assert list(parsed) == ["alice", "bob"]
    assert parsed["alice"].startswith("$2b$04$")
    assert bcrypt.checkpw(b"pw-a", parsed["alice"].encode())


def test_unchanged_passwords_keep_their_hash_and_changed_ones_get_a_new_one():
    verifier = htpasswd.Verifier()
    first = dict(htpasswd.reconcile({"alice": "a", "bob": "b"}, {}, verifier, cost=4))
    second = dict(htpasswd.reconcile({"alice": "a", "bob": "new"}, first, htpasswd.Verifier(), cost=4))
    assert second["alice"] == first["alice"]
    assert second["bob"] != first["bob"] and bcrypt.checkpw(b"new", second["bob"].encode())


def test_verifier_remembers_so_a_resync_does_no_bcrypt(monkeypatch):
    verifier = htpasswd.Verifier()
    lines = dict(htpasswd.reconcile({"alice": "a"}, {}, verifier, cost=4))
    calls = []
    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(htpasswd.bcrypt, "hashpw", lambda *a: calls.append(a) or b"")
    assert dict(htpasswd.reconcile({"alice": "a"}, lines, verifier, cost=4)) == lines
    assert calls == []


def test_malformed_lines_are_dropped_and_reported_by_number():
    good = htpasswd.hash_password("pw", cost=4)
    text = f"# comment\nalice:{good}\nbroken line\nbob:plaintext\n:{good}\nalice:{good[:-1]}x\n"
    bad: list[int] = []
    assert htpasswd.parse(text, bad.append) == {"alice": good}
    assert bad == [3, 4, 5]


@pytest.mark.parametrize(
    ("user", "password", "problem"),
    [("al:ice", "pw", "contains ':'"), ("alice", "x" * 73, "longer than 72 bytes"), ("alice", "", "empty"),
     ("alice", "two\nlines", "line break"), ("alice", "é" * 37, "longer than 72 bytes")],
)
def test_refusals_name_the_problem_not_the_password(user, password, problem):
    with pytest.raises(htpasswd.PasswordError) as err:
        htpasswd.validate(user, password)
    assert problem in str(err.value)
    if password:
        assert password not in str(err.value)


def test_72_bytes_is_accepted():
    htpasswd.validate("alice", "x" * 72)
