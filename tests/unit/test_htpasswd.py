"""htpasswd: format, stability, refusals."""

import bcrypt
import pytest

from registry_operator import htpasswd

KEY = b"k" * 32
FAST = {"alice": 4, "bob": 4}


def test_lines_are_bcrypt_and_verify():
    lines, prints = htpasswd.reconcile({"alice": "pw-a", "bob": "pw-b"}, {}, {}, KEY, FAST)
    text = htpasswd.render(lines)
    assert text.endswith("\n") and text.count("\n") == 2
    parsed = htpasswd.parse(text)
    assert list(parsed) == ["alice", "bob"]
    assert parsed["alice"].startswith("$2b$04$")
    assert bcrypt.checkpw(b"pw-a", parsed["alice"].encode())
    assert set(prints) == {"alice", "bob"} and "pw-a" not in str(prints)


def test_unchanged_passwords_keep_their_hash_and_changed_ones_get_a_new_one():
    first, prints = htpasswd.reconcile({"alice": "a", "bob": "b"}, {}, {}, KEY, FAST)
    second, _ = htpasswd.reconcile({"alice": "a", "bob": "new"}, dict(first), prints, KEY, FAST)
    old, new = dict(first), dict(second)
    assert new["alice"] == old["alice"]
    assert new["bob"] != old["bob"] and bcrypt.checkpw(b"new", new["bob"].encode())


def test_fingerprints_spare_bcrypt_in_any_later_process(monkeypatch):
    lines, prints = htpasswd.reconcile({"alice": "a"}, {}, {}, KEY, FAST)
    calls = []
    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(htpasswd.bcrypt, "hashpw", lambda *a: calls.append(a) or b"")
    assert htpasswd.reconcile({"alice": "a"}, dict(lines), prints, KEY, FAST) == (lines, prints)
    assert calls == []


def test_a_hash_without_fingerprint_is_verified_once_and_kept():
    digest = htpasswd.hash_password("a", cost=4)
    lines, prints = htpasswd.reconcile({"alice": "a"}, {"alice": digest}, {}, KEY, FAST)
    assert lines == [("alice", digest)] and prints["alice"] == htpasswd.fingerprint(KEY, "alice", "a")
    other_key, _ = htpasswd.reconcile({"alice": "b"}, {"alice": digest}, prints, KEY, FAST)
    assert other_key[0][1] != digest  # a changed password never matches the old fingerprint


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


def test_a_hash_of_another_cost_is_made_anew():
    lines, prints = htpasswd.reconcile({"alice": "a"}, {}, {}, KEY, FAST)
    again, _ = htpasswd.reconcile({"alice": "a"}, dict(lines), prints, KEY, {"alice": 5})
    assert again[0][1].startswith("$2b$05$") and bcrypt.checkpw(b"a", again[0][1].encode())
