"""A pull-through cache (spec.proxy): what the spec accepts, what is rendered for each version, where the
upstream credentials and CA go (never the ConfigMap), and what status says."""

import datetime as dt
import json

import pytest
import yaml
from builders import OWNER, by_key, decode_secrets

from registry_operator import conditions, material, pki, render, spec

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
CA = pki.issue_ca("upstream CA").cert_pem
SECRETS = {"up-login": {"username": b"mirror", "password": b"s3cret-upstream"}, "up-ca": {"ca.crt": CA}}
PROXY = {"remoteURL": "https://upstream.example:5000", "credentialsSecretName": "up-login", "caSecretName": "up-ca"}


def _raw(version: str = "3", **proxy: object) -> dict:
    return {"version": version, "auth": {"users": [{"name": "alice"}]}, "proxy": {**PROXY, **proxy}}


def _render(raw: dict, observed: dict | None = None):
    s = spec.parse("reg", "ns", raw)
    mat = material.decide(s, observed if observed is not None else SECRETS)
    return s, mat, by_key(render.desired(s, mat, OWNER, "img"))


def _container(objects: dict) -> dict:
    return objects[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version, ttl", [("3", "168h"), ("2.8", None)])
def test_config_names_the_upstream_and_expires_through_delete(version, ttl):
    _, _, objects = _render(_raw(version))
    config = yaml.safe_load(objects[("ConfigMap", "reg-config")]["data"]["config.yml"])
    assert config["proxy"].get("remoteurl") == "https://upstream.example:5000"
    assert config["proxy"].get("ttl") == ttl  # 2.8 has no such key: it keeps content 7 days
    assert "username" not in config["proxy"] and "password" not in config["proxy"]
    assert config["storage"]["delete"]["enabled"] is True  # the TTL expiry deletes manifests through it


def test_ttl_is_rendered_as_given():
    _, _, objects = _render(_raw(ttl="0s"))
    assert yaml.safe_load(objects[("ConfigMap", "reg-config")]["data"]["config.yml"])["proxy"]["ttl"] == "0s"


def test_credentials_and_ca_reach_the_pod_from_the_registrys_own_copy():
    _, _, objects = _render(_raw())
    assert decode_secrets(list(objects.values()))["reg-upstream"] == {
        "username": b"mirror", "password": b"s3cret-upstream", "ca.crt": CA}
    container = _container(objects)
    env = {e["name"]: e for e in container["env"]}
    for key in ("username", "password"):
        assert env[f"REGISTRY_PROXY_{key.upper()}"]["valueFrom"] == {
            "secretKeyRef": {"name": "reg-upstream", "key": key}}
    assert env["SSL_CERT_FILE"]["value"] == "/etc/registry/upstream/ca.crt"
    assert {"name": "upstream", "mountPath": "/etc/registry/upstream", "readOnly": True} in container["volumeMounts"]
    volumes = {v["name"]: v for v in objects[("Deployment", "reg")]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["upstream"]["secret"]["secretName"] == "reg-upstream"
    # The password is in the Secret only: not in the ConfigMap, the Deployment or anything else rendered.
    for key, obj in objects.items():
        if key != ("Secret", "reg-upstream"):
            assert "s3cret-upstream" not in json.dumps(obj), key


def test_without_credentials_or_ca_nothing_is_wired():
    _, _, objects = _render(_raw(credentialsSecretName=None, caSecretName=None) | {
        "proxy": {"remoteURL": "https://upstream.example"}})
    names = {e["name"] for e in _container(objects)["env"]}
    assert not names & {"REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD", "SSL_CERT_FILE"}
    # No Secret at all (an empty one would be stored without `data`, and never compare equal): removed if it was.
    assert ("Secret", "reg-upstream") not in objects
    assert ("v1", "Secret", "reg-upstream") in render.obsolete(spec.parse("reg", "ns", {
        "auth": {"mode": "none"}, "proxy": {"remoteURL": "https://upstream.example"}}))


def test_a_changed_upstream_password_or_ca_rolls_the_pods():
    _, _, first = _render(_raw())
    kept = {k: v for k, v in decode_secrets(list(first.values())).items() if k != "reg-upstream"}

    def inputs_hash(observed: dict) -> str:
        s = spec.parse("reg", "ns", _raw())
        mat = material.decide(s, {**kept, **observed})
        deployment = by_key(render.desired(s, mat, OWNER, "img"))[("Deployment", "reg")]
        return deployment["spec"]["template"]["metadata"]["annotations"]["registry.operator.dev/inputs-hash"]

    before = inputs_hash(SECRETS)
    assert inputs_hash(SECRETS) == before
    assert inputs_hash({**SECRETS, "up-login": {"username": b"mirror", "password": b"new"}}) != before
    assert inputs_hash({**SECRETS, "up-ca": {"ca.crt": pki.issue_ca("another").cert_pem}}) != before


def test_a_broken_reference_keeps_the_last_good_copy_and_says_why():
    _, first, _ = _render(_raw())
    kept = {"reg-upstream": dict(first.upstream)}
    _, mat, _ = _render(_raw(), kept)  # both referenced Secrets are gone
    assert mat.upstream == first.upstream
    assert {p.reason for p in mat.problems} == {"UpstreamCredentialsNotFound", "UpstreamCANotFound"}
    for login in ({"username": b"mirror"}, {"username": b"mir:ror", "password": b"x"},
                  {"username": b"mirror", "password": b"\xff"}):
        broken = {"up-login": login, "up-ca": {"ca.crt": b"not a certificate"}}
        _, mat, _ = _render(_raw(), {**kept, **broken})
        assert mat.upstream == first.upstream
        assert {p.reason for p in mat.problems} == {"UpstreamCredentialsInvalid", "UpstreamCAInvalid"}
    assert not any("s3cret" in p.message for p in mat.problems)


@pytest.mark.parametrize("raw, message", [
    (_raw("2.8", ttl="24h"), "proxy.ttl needs version 3"),
    ({**_raw(), "garbageCollection": {}, "storage": {"persistentVolumeClaim": {}}}, "garbageCollection does not"),
    ({**_raw(), "auth": {"mode": "token", "users": [{"name": "a"}], "access": [
        {"users": ["a"], "repositories": ["*"], "actions": ["pull", "push"]}]}}, "may grant only pull"),
    (_raw(remoteURL="ftp://upstream"), "is not http"),
    (_raw(remoteURL="https://user:pw@upstream"), "is not http"),
])
def test_what_makes_no_sense_for_a_cache_is_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        spec.parse("reg", "ns", raw)


def test_the_former_caches_upstream_secret_is_deleted():
    assert ("v1", "Secret", "reg-upstream") in render.obsolete(spec.parse("reg", "ns", {"auth": {"mode": "none"}}))
    assert ("v1", "Secret", "reg-upstream") not in render.obsolete(spec.parse("reg", "ns", _raw()))


def _status(upstream_problems, complete: bool = True, version: str = "3", **proxy: object) -> dict:
    s = spec.parse("reg", "ns", {**_raw(version, **proxy), "storage": {"persistentVolumeClaim": {}}})
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {
        "observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": int(complete),
        "availableReplicas": int(complete)}}
    return conditions.compute(s, 1, [], {"reg": deployment}, {"endpoint": "reg.ns.svc:5000"}, None, NOW,
                              upstream_problems=upstream_problems)


def _conditions(status: dict) -> dict:
    return {c["type"]: c for c in status["conditions"]}


def test_status_says_pushes_are_refused():
    found = _conditions(_status([]))
    assert found["Upstream"]["status"] == "True" and found["Upstream"]["reason"] == "Reachable"
    assert "pushes and deletes are refused" in found["Upstream"]["message"]
    assert "keep it for 168h" in found["Upstream"]["message"]
    assert "pull-through cache of https://upstream.example:5000 (pushes are refused)" in found["Ready"]["message"]
    assert "keep it for 7 days" in _conditions(_status([], version="2.8"))["Upstream"]["message"]
    assert "keep it forever" in _conditions(_status([], ttl="0s"))["Upstream"]["message"]


def test_an_unreachable_upstream_is_a_condition_and_one_warning():
    problem = material.Problem("UpstreamUnreachable", "https://upstream.example:5000/v2/: cannot connect")
    status = _status([problem])
    found = _conditions(status)
    assert (found["Upstream"]["status"], found["Upstream"]["reason"]) == ("False", "UpstreamUnreachable")
    assert found["Ready"]["status"] == "True"  # cached content is still served
    assert ("Warning", "UpstreamUnreachable", problem.message) in conditions.transitions(None, status)
    assert conditions.transitions(status, _status([problem])) == []  # said once
    starting = _conditions(_status([problem], complete=False))["Ready"]  # distribution exits at start
    assert (starting["status"], starting["reason"]) == ("False", "UpstreamUnreachable")


def test_a_plain_http_upstream_is_flagged():
    warning = _conditions(_status([], remoteURL="http://upstream.example:5000"))["Warning"]
    assert (warning["status"], warning["reason"]) == ("True", "PlainUpstream")
    assert _conditions(_status([]))["Warning"]["reason"] != "PlainUpstream"
