"""A pull-through cache (spec.proxy) on a real control plane: what the schema refuses, with the field path,
and what status says of an upstream nobody answers at, said once and then no more writes."""

from __future__ import annotations

import base64
import socket
import time

import pytest
import yaml
from registries import condition, is_ready, manifest, owned, registry

from registry_operator import pki

USERS = {"auth": {"users": [{"name": "alice"}]}}
PROXY = {"remoteURL": "https://upstream.example:5000"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"proxy": {}, **USERS}, "spec.proxy.remoteURL: Required value"),
        ({"proxy": {"remoteURL": "ftp://upstream"}, **USERS}, "spec.proxy.remoteURL: Invalid value"),
        ({"proxy": {"remoteURL": "https://user:pw@upstream"}, **USERS}, "spec.proxy.remoteURL: Invalid value"),
        ({"proxy": {**PROXY, "ttl": "24h"}, "version": "2.8", **USERS},
         "spec.proxy.ttl: Invalid value: proxy.ttl needs version 3"),
        ({"proxy": PROXY, "storage": {"persistentVolumeClaim": {}}, "garbageCollection": {}, **USERS},
         "spec.garbageCollection: Invalid value: garbageCollection does not apply to a pull-through"),
        ({"proxy": PROXY, "auth": {"mode": "token", "users": [{"name": "a"}], "access": [
            {"users": ["a"], "repositories": ["*"], "actions": ["pull", "push"]}]}},
         "spec.auth.access: Invalid value: a pull-through cache refuses pushes and deletes"),
        ({"proxy": PROXY, "auth": {"mode": "token", "users": [{"name": "a"}], "access": [
            {"users": ["a"], "repositories": ["*"], "actions": ["*"]}]}}, "auth.access may grant only pull"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_makes_no_sense_for_a_cache_is_rejected(cluster, namespace, spec, message):
    result = cluster.kubectl("apply", "-f", "-", input=manifest("bad", namespace, spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_cache_that_only_pulls_is_accepted(cluster, namespace):
    spec = {"proxy": {**PROXY, "ttl": "0s"}, "auth": {"mode": "token", "users": [{"name": "a"}], "access": [
        {"users": ["a"], "repositories": ["*"], "actions": ["pull"]}]}}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest("ok", namespace, spec),
                             check=False)
    assert result.returncode == 0, result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_upstream_is_a_condition_said_once(cluster, kube_client, namespace, operator_factory,
                                                           wait_for):
    first = operator_factory()
    url = f"https://127.0.0.1:{_closed_port()}"
    ca = base64.b64encode(pki.issue_ca("upstream CA").cert_pem).decode()
    login = {k: base64.b64encode(v.encode()).decode() for k, v in (("username", "mirror"), ("password", "pw-42"))}
    for name, data in (("up-login", login), ("up-ca", {"ca.crt": ca})):
        cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "data": data,
                                      "metadata": {"name": name, "namespace": namespace}}))
    proxy = {"remoteURL": url, "credentialsSecretName": "up-login", "caSecretName": "up-ca"}
    cluster.apply(manifest("cache", namespace, {"proxy": proxy, **USERS}))
    wait_for(lambda: is_ready(kube_client, "cache", namespace), timeout=60, what="Registry Ready (kwok)")
    assert ("Secret", "cache-upstream") in owned(kube_client, namespace, "cache")

    upstream = wait_for(lambda: condition(kube_client, "cache", namespace, "Upstream"), what="Upstream condition")
    assert (upstream["status"], upstream["reason"]) == ("False", "UpstreamUnreachable"), upstream
    assert url in upstream["message"] and "cannot connect" in upstream["message"]
    assert registry(kube_client, "cache", namespace)["status"]["upstream"] == url
    wide = cluster.kubectl("get", "registry", "cache", "-n", namespace, "-o", "wide").stdout
    assert "UPSTREAM" in wide and url in wide

    def warnings() -> list[str]:
        return cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                               "involvedObject.kind=Registry,reason=UpstreamUnreachable",
                               "-o", "jsonpath={.items[*].count}").stdout.split()

    assert wait_for(warnings, timeout=10, what="a Warning Event") == ["1"]
    time.sleep(2)  # let the last child events settle
    before = owned(kube_client, namespace, "cache")
    registry_rv = registry(kube_client, "cache", namespace)["metadata"]["resourceVersion"]
    first.stop()

    # A restart resumes the Registry: a full reconcile, which probes the upstream again and finds it down again.
    second = operator_factory(args=["--all-namespaces", "--log-level", "DEBUG"])
    second.wait_for_log(rf"Registry {namespace}/cache reconciled: 0 applied, 0 deleted, status unchanged",
                        timeout=30)
    time.sleep(2)
    assert owned(kube_client, namespace, "cache") == before
    assert registry(kube_client, "cache", namespace)["metadata"]["resourceVersion"] == registry_rv
    assert warnings() == ["1"]
    assert "pw-42" not in first.log() + second.log()
