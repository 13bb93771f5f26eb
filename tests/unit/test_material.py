"""Material decisions: what is kept, what is created, and how bad input is reported."""

import base64
import datetime as dt
import json

from builders import by_key, decode_secrets

from registry_operator import htpasswd, pki

USERS = {"auth": {"users": [{"name": "alice"}, {"name": "bob", "passwordSecretRef": {"name": "bob-pw"}}]}}


def test_generated_passwords_are_kept_forever(pipeline):
    _, first, objects = pipeline.run(USERS, {"bob-pw": {"password": b"bob-secret"}})
    assert set(first.passwords) == {"alice"} and len(first.passwords["alice"]) >= 24
    observed = {**decode_secrets(objects), "bob-pw": {"password": b"bob-secret"}}
    _, second, _ = pipeline.run(USERS, observed)
    assert second.passwords == first.passwords
    assert second.http_secret == first.http_secret
    assert second.ca == first.ca and second.server == first.server


def test_missing_password_secret_is_a_problem_and_keeps_the_last_good_line(pipeline):
    _, good, objects = pipeline.run(USERS, {"bob-pw": {"password": b"bob-secret"}})
    _, broken, _ = pipeline.run(USERS, decode_secrets(objects))
    assert [p.reason for p in broken.problems] == ["PasswordSecretNotFound"]
    assert "bob-pw" in broken.problems[0].message
    assert broken.htpasswd == good.htpasswd  # bob is not locked out while his Secret is briefly gone


def test_missing_key_and_invalid_passwords(pipeline):
    _, mat, _ = pipeline.run(USERS, {"bob-pw": {"other": b"x"}})
    assert [p.reason for p in mat.problems] == ["PasswordSecretKeyMissing"]
    too_long = b"y" * 80
    _, mat, _ = pipeline.run(USERS, {"bob-pw": {"password": too_long}})
    assert [p.reason for p in mat.problems] == ["PasswordInvalid"]
    assert too_long.decode() not in mat.problems[0].message
    assert "bob:" not in mat.htpasswd


def test_referenced_password_change_rehashes_only_that_user(pipeline):
    _, first, objects = pipeline.run(USERS, {"bob-pw": {"password": b"one"}})
    observed = {**decode_secrets(objects), "bob-pw": {"password": b"two"}}
    _, second, _ = pipeline.run(USERS, observed)
    old, new = htpasswd.parse(first.htpasswd), htpasswd.parse(second.htpasswd)
    assert old["alice"] == new["alice"] and old["bob"] != new["bob"]


def test_user_tls_secret_problems(pipeline):
    raw = {**USERS, "tls": {"mode": "Secret", "secretName": "mine"}}
    bob = {"bob-pw": {"password": b"pw"}}
    _, mat, _ = pipeline.run(raw, bob)
    assert [p.reason for p in mat.problems] == ["TLSSecretNotFound"]
    ca = pki.issue_ca("users CA")
    one, two = pki.issue_server(ca, ["reg.example"]), pki.issue_server(ca, ["reg.example"])
    _, mat, _ = pipeline.run(raw, {**bob, "mine": {"tls.crt": one.cert_pem, "tls.key": two.key_pem}})
    assert [p.reason for p in mat.problems] == ["TLSKeyMismatch"]
    _, mat, _ = pipeline.run(raw, {**bob, "mine": {"tls.crt": b"garbage", "tls.key": one.key_pem}})
    assert [p.reason for p in mat.problems] == ["TLSCertificateMalformed"]
    _, mat, objects = pipeline.run(raw, {**bob, "mine": {"tls.crt": one.cert_pem, "tls.key": one.key_pem,
                                                        "ca.crt": ca.cert_pem}})
    assert mat.problems == () and mat.ca is None and mat.serving_cert_pem == one.cert_pem
    published = by_key(objects)[("Secret", "reg-ca")]["data"]["ca.crt"]
    assert base64.b64decode(published) == ca.cert_pem
    # The pods mount our copy, made only of a pair that passed the checks.
    copy = by_key(objects)[("Secret", "reg-tls")]["data"]
    assert base64.b64decode(copy["tls.crt"]) == one.cert_pem and base64.b64decode(copy["tls.key"]) == one.key_pem


def test_a_broken_user_tls_secret_keeps_the_last_good_copy(pipeline):
    raw = {**USERS, "tls": {"mode": "Secret", "secretName": "mine"}}
    bob = {"bob-pw": {"password": b"pw"}}
    ca = pki.issue_ca("users CA")
    good = pki.issue_server(ca, ["reg.example"])
    _, _, objects = pipeline.run(raw, {**bob, "mine": {"tls.crt": good.cert_pem, "tls.key": good.key_pem}})
    kept = decode_secrets(objects)
    expired = pki.issue_server(ca, ["reg.example"], validity=dt.timedelta(minutes=1))  # backdated 5 minutes
    deployment = by_key(objects)[("Deployment", "reg")]
    for broken in (None, {"tls.crt": expired.cert_pem, "tls.key": expired.key_pem},
                   {"tls.crt": good.cert_pem, "tls.key": expired.key_pem}):
        observed = {**kept, **bob, **({"mine": broken} if broken else {})}
        _, mat, again = pipeline.run(raw, observed)
        assert len(mat.problems) == 1 and "last good certificate" in mat.problems[0].message
        assert mat.serving_cert_pem == good.cert_pem
        assert by_key(again)[("Deployment", "reg")] == deployment  # no roll


def test_extra_names_reissue_the_server_certificate(pipeline):
    _, first, objects = pipeline.run({"auth": {"users": [{"name": "a"}]}})
    _, second, _ = pipeline.run({"auth": {"users": [{"name": "a"}]}, "tls": {"ipAddresses": ["127.0.0.1"]}},
                                decode_secrets(objects))
    assert second.ca == first.ca and second.server != first.server
    assert "127.0.0.1" in pki.sans(pki.load_chain(second.server.cert_pem)[0])


def test_a_settled_registry_costs_no_bcrypt_and_no_key_generation(pipeline, monkeypatch):
    _, first, objects = pipeline.run(USERS, {"bob-pw": {"password": b"bob-secret"}})
    observed = {**decode_secrets(objects), "bob-pw": {"password": b"bob-secret"}}
    calls = []
    for name in ("hashpw", "checkpw", "gensalt"):
        monkeypatch.setattr(htpasswd.bcrypt, name, lambda *a, _n=name: calls.append(_n))
    for name in ("issue_ca", "issue_server", "issue_signing"):
        monkeypatch.setattr(pki, name, lambda *a, _n=name: calls.append(_n))
    _, again, rendered = pipeline.run(USERS, observed)  # what a fresh process (a restart) sees
    assert calls == [] and again == first and rendered == objects
    fingerprints = decode_secrets(rendered)["reg-htpasswd"]["fingerprints"].decode()
    assert set(json.loads(fingerprints)) == {"alice", "bob"}
    assert "bob-secret" not in fingerprints and first.passwords["alice"] not in fingerprints


def test_generated_passwords_get_the_minimum_bcrypt_cost_and_referenced_ones_the_default(pipeline):
    _, mat, _ = pipeline.run(USERS, {"bob-pw": {"password": b"bob-secret"}})
    hashes = htpasswd.parse(mat.htpasswd)
    assert hashes["alice"].startswith(f"$2b${htpasswd.GENERATED_COST:02d}$")
    assert hashes["bob"].startswith(f"$2b${htpasswd.COST:02d}$")


def test_a_deleted_passwords_secret_comes_back_with_the_same_passwords(pipeline):
    raw = {"auth": {"users": [{"name": "alice"}, {"name": "ci@corp"}]}}
    _, first, objects = pipeline.run(raw)
    observed = decode_secrets(objects)
    del observed["reg-passwords"]
    _, second, again = pipeline.run(raw, observed)
    assert second.passwords == first.passwords
    assert by_key(again)[("Secret", "reg-passwords")] == by_key(objects)[("Secret", "reg-passwords")]


def test_token_mode_with_a_user_certificate_publishes_a_stable_bundle(pipeline):
    """The user's CA and ours share `<name>-ca`; feeding it back must not append the user's CA again."""
    ca = pki.issue_ca("users CA")
    pair = pki.issue_server(ca, ["reg.example"])
    raw = {"tls": {"mode": "Secret", "secretName": "mine"},
           "auth": {"mode": "token", "users": [{"name": "a"}],
                    "access": [{"users": ["a"], "repositories": ["*"], "actions": ["pull"]}]}}
    user = {"mine": {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}}
    _, first, objects = pipeline.run(raw, user)
    observed = {**decode_secrets(objects), **user}
    for _ in range(3):
        _, again, objects = pipeline.run(raw, observed)
        observed = {**decode_secrets(objects), **user}
    assert again.client_ca_pem == first.client_ca_pem and len(pki.split(again.client_ca_pem)) == 2
