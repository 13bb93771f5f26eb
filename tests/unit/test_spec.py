"""The typed spec: defaults as in the CRD, durations."""

import pathlib
import re

import pytest
import yaml

from registry_operator import spec


def test_defaults_match_the_crd():
    s = spec.parse("reg", "ns", {})
    assert (s.version, s.image, s.replicas) == ("3", spec.IMAGES["3"], 1)
    assert (s.tls.mode, s.auth.mode, s.service.type, s.service.port) == ("SelfSigned", "htpasswd", "ClusterIP", 5000)
    assert s.storage.claim is None and not s.storage.delete_enabled
    assert s.auth.token_ttl_seconds == 300


def test_version_28_selects_the_pinned_28_image_unless_overridden():
    assert spec.parse("r", "n", {"version": "2.8"}).image == spec.IMAGES["2.8"]
    assert spec.parse("r", "n", {"version": "2.8", "image": "mirror/registry:2.8.3"}).image == "mirror/registry:2.8.3"


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("90s", 90), ("1h30m", 5400), ("2h", 7200)])
def test_durations(text, seconds):
    assert spec.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "-5m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        spec.parse_duration(text)


@pytest.mark.parametrize("raw", [
    {"auth": {"users": [{"name": "a", "passwordSecretRef": {"name": "../../kube-system/secrets/x"}}]}},
    {"tls": {"mode": "Secret", "secretName": "a/b"}, "auth": {"users": [{"name": "a"}]}},
])
def test_secret_references_must_be_object_names(raw):
    """The name becomes part of an API path: `a/../b` must never address another object or namespace."""
    with pytest.raises(ValueError, match="not a valid object name"):
        spec.parse("reg", "ns", raw)


SERVICE_ACCOUNTS = ["ns/ci", "ns/*", "a/b.c-d", "ns/ci/x", "ns/", "/ci", "*/ci", "NS/ci", "ns/c*", "ns:ci", "-a/b"]


def _crd_service_account_pattern() -> str:
    crd = yaml.safe_load((pathlib.Path(__file__).parents[2] / "crds" / "registries.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["auth"]
    return schema["properties"]["access"]["items"]["properties"]["serviceAccounts"]["items"]["pattern"]


def test_service_account_entries_are_checked_like_the_crd_does():
    """A malformed entry (a CRD installed without the pattern) is an InvalidSpec, never a token-service crash
    loop; the CRD's pattern and the operator's check accept the same entries."""
    pattern = re.compile(_crd_service_account_pattern())
    for entry in SERVICE_ACCOUNTS:
        rule = {"serviceAccounts": [entry], "repositories": ["*"], "actions": ["pull"]}
        raw = {"auth": {"mode": "token", "users": [{"name": "a"}], "access": [rule]}}
        if pattern.search(entry):
            assert spec.parse("reg", "ns", raw).auth.access[0].service_accounts == (entry,)
        else:
            with pytest.raises(ValueError, match="not namespace/name or namespace/"):
                spec.parse("reg", "ns", raw)
    assert [e for e in SERVICE_ACCOUNTS if pattern.search(e)] == ["ns/ci", "ns/*", "a/b.c-d"]


def test_pull_secrets_of_a_joined_registry_are_refused() -> None:
    # Its users are the index's: no robot credential of its own (the CRD refuses it too, for an older schema).
    raw = {"auth": {"mode": "token", "indexRef": {"name": "idx"}}, "pullSecrets": {"namespaces": ["apps"]}}
    with pytest.raises(ValueError, match="pullSecrets needs the Registry's own users"):
        spec.parse("reg", "ns", raw)
