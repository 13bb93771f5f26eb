"""A pull-through cache (spec.proxy) in front of a second registry playing the upstream, with TLS (its own
private CA) and htpasswd: the upstream is itself a Registry the operator made, its pod run by podrunner.

A first pull through the cache fetches from the upstream; with the upstream stopped, a second pull is served
from the cache, byte for byte; a push to the cache is refused. Everything the cache needs (the upstream's CA
and a login) reaches it only through the Secrets spec.proxy names.
"""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from tests.support import ociimage
from tests.support.clients import ClientError, Crane
from tests.support.deployed import DeployedRegistry, Registry, create_registry, wait_for

USERS = {"mode": "htpasswd", "users": [{"name": "alice"}, {"name": "bob"}]}
# On podrunner: the cache reaches its upstream on loopback (test_real_node has a cache on the real node).
CACHE = "test_proxy_clients: the cache's upstream is a loopback address"
UPSTREAM = "test_proxy_clients: a cache on the pod runner reaches it on loopback, and the test stops it"


def _blobs(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def _upstream_condition(reg: DeployedRegistry) -> dict[str, Any] | None:
    conditions = (reg.get().get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Upstream"), None)


def _cache_of(
    upstream: DeployedRegistry, version: str, kube_client: Client, make_namespace: Callable[[str], str],
    workdir: Path, login: bool = True,
) -> DeployedRegistry:
    """A cache Registry of `upstream` in a namespace of its own, given the upstream's CA and (`login`) alice's
    login as a user would: Secrets of its namespace."""
    namespace = make_namespace(f"cache{version.replace('.', '')}")
    secrets = {"up-ca": {"ca.crt": upstream.ca_pem()}}
    proxy = {"remoteURL": f"https://{upstream.address}", "caSecretName": "up-ca"}
    if login:
        secrets["up-login"] = {"username": b"alice", "password": upstream.passwords()["alice"].encode()}
        proxy["credentialsSecretName"] = "up-login"
    for name, data in secrets.items():
        kube_client.create(Secret(metadata=ObjectMeta(name=name, namespace=namespace),
                                  data={k: base64.b64encode(v).decode() for k, v in data.items()}))
    workdir.mkdir()
    spec = {"version": version, "tls": {"ipAddresses": ["127.0.0.1"]}, "auth": USERS, "proxy": proxy}
    return create_registry(kube_client, namespace, "cache", spec, workdir, pod_runner=CACHE)


@pytest.mark.parametrize("version", ["3", "2.8"], ids=["v3", "v2.8"])
def test_pulls_come_from_the_upstream_then_from_the_cache_and_pushes_are_refused(
    version: str, deploy: Callable[..., DeployedRegistry], kube_client: Client,
    make_namespace: Callable[[str], str], tmp_path: Path,
) -> None:
    """Version 3 logs in to an htpasswd upstream; 2.8 cannot (see the next test), so its upstream is anonymous
    (still TLS from a private CA)."""
    login = version == "3"
    upstream = deploy("3", name="upstream", pod_runner=UPSTREAM, **({} if login else {"auth": {"mode": "none"}}))
    image = ociimage.build(tmp_path / "image", tag="v1", layers=2, size=2 * 1024 * 1024)
    creds = ("alice", upstream.passwords()["alice"]) if login else None
    Crane(tmp_path / "up", upstream.ca_pem(), upstream.address, creds).run(
        "push", str(image.path), f"{upstream.address}/team/app:v1")

    cache = _cache_of(upstream, version, kube_client, make_namespace, tmp_path / "cache-pods", login)
    status = cache.get()["status"]
    assert status["upstream"] == f"https://{upstream.address}"
    condition = wait_for(lambda: _upstream_condition(cache), "the Upstream condition")
    assert (condition["status"], condition["reason"]) == ("True", "Reachable"), condition
    assert "pushes and deletes are refused" in condition["message"]
    cache.start_pod()
    crane = Crane(tmp_path / "client", cache.ca_pem(), cache.address, ("bob", cache.passwords()["bob"]))
    ref = f"{cache.address}/team/app:v1"

    started = time.monotonic()
    crane.run("pull", "--format=oci", ref, str(tmp_path / "first"))
    first = time.monotonic() - started
    assert _blobs(tmp_path / "first") == _blobs(image.path)  # manifest, config and layers, byte for byte
    assert "team/app" in cache.runner.logs() and "GET /v2/team/app" in upstream.runner.logs()
    with pytest.raises(ClientError) as refused:  # the blobs are in the cache: the manifest's PUT is refused
        crane.run("push", str(image.path), f"{cache.address}/team/app:v2")
    assert "UNSUPPORTED: The operation is unsupported" in refused.value.output, refused.value.output
    assert re.search(r'"PUT /v2/team/app/manifests/v2 HTTP/[0-9.]+" 405', cache.runner.logs())

    upstream.stop()
    started = time.monotonic()
    crane.run("pull", "--format=oci", ref, str(tmp_path / "second"))
    second = time.monotonic() - started
    assert _blobs(tmp_path / "second") == _blobs(image.path)
    print(f"\n{version}: pull through the cache, 2 MiB: {first:.2f} s from the upstream, {second:.2f} s with "
          "it stopped")


def test_version_28_cannot_log_in_to_a_basic_auth_upstream_and_says_so(
    deploy: Callable[..., DeployedRegistry], kube_client: Client, make_namespace: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """distribution 2.8 hands the configured credentials only to a token (Bearer) realm: an htpasswd upstream
    gets no login. The Upstream condition says so, and a pull through it indeed fails."""
    upstream = deploy("3", name="upstream", pod_runner=UPSTREAM)
    image = ociimage.build(tmp_path / "image", tag="v1", layers=1, size=64 * 1024)
    Crane(tmp_path / "up", upstream.ca_pem(), upstream.address, ("alice", upstream.passwords()["alice"])).run(
        "push", str(image.path), f"{upstream.address}/team/app:v1")
    cache = _cache_of(upstream, "2.8", kube_client, make_namespace, tmp_path / "cache-pods")
    condition = wait_for(lambda: _upstream_condition(cache), "the Upstream condition")
    assert (condition["status"], condition["reason"]) == ("False", "UpstreamAuthUnsupported"), condition
    cache.start_pod()
    crane = Crane(tmp_path / "client", cache.ca_pem(), cache.address, ("bob", cache.passwords()["bob"]))
    with pytest.raises(ClientError) as failed:
        crane.run("pull", "--format=oci", f"{cache.address}/team/app:v1", str(tmp_path / "pulled"))
    assert "MANIFEST_UNKNOWN" in failed.value.output, failed.value.output  # nothing cached, nothing fetched
    # The upstream refused the cache's request: it came without the credentials.
    assert re.search(r'"GET /v2/team/app/manifests/v1 HTTP/[0-9.]+" 401', upstream.runner.logs())


def test_the_upstream_condition_names_what_is_wrong_until_it_is_fixed(
    deploy: Callable[..., DeployedRegistry], kube_client: Client, make_namespace: Callable[[str], str],
) -> None:
    """An untrusted certificate, then a refused login, then Reachable: each fix reaches the condition through
    the referenced Secrets' watch (no pod needed: this is the operator's probe)."""
    upstream = deploy("3", name="upstream")
    namespace = make_namespace("cachefix")
    watched = {"registry.operator.dev/watch": "true"}
    kube_client.create(Secret(metadata=ObjectMeta(name="up-login", namespace=namespace, labels=watched),
                              stringData={"username": "alice", "password": "wrong"}))
    proxy = {"remoteURL": f"https://{upstream.address}", "credentialsSecretName": "up-login"}
    kube_client.create(Registry(metadata={"name": "cache", "namespace": namespace},
                                spec={"auth": USERS, "proxy": proxy}))

    def reason() -> str | None:
        found = _upstream_condition(DeployedRegistry(kube_client, namespace, "cache", Path()))
        return found and found["reason"]

    wait_for(lambda: reason() == "UpstreamUntrusted", "UpstreamUntrusted")
    kube_client.create(Secret(metadata=ObjectMeta(name="up-ca", namespace=namespace, labels=watched),
                              data={"ca.crt": base64.b64encode(upstream.ca_pem()).decode()}))
    kube_client.patch(Registry, "cache", {"spec": {"proxy": {"caSecretName": "up-ca"}}}, namespace=namespace,
                      patch_type=PatchType.MERGE)
    wait_for(lambda: reason() == "UpstreamUnauthorized", "UpstreamUnauthorized")
    kube_client.patch(Secret, "up-login", {"stringData": {"password": upstream.passwords()["alice"]}},
                      namespace=namespace, patch_type=PatchType.MERGE)
    wait_for(lambda: reason() == "Reachable", "Reachable", timeout=15)


@pytest.mark.parametrize("version", ["3", "2.8"], ids=["v3", "v2.8"])
def test_without_its_upstream_the_cache_does_not_start_and_status_says_why(
    version: str, deploy: Callable[..., DeployedRegistry],
) -> None:
    """distribution asks the upstream for /v2/ at start and exits without an answer: the rendered pod fails, and
    the operator's own request has already put the reason in status."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed
    cache = deploy(version, name="cache", pod=False, proxy={"remoteURL": url}, pod_runner=CACHE)
    condition = wait_for(lambda: _upstream_condition(cache), "the Upstream condition")
    assert (condition["status"], condition["reason"]) == ("False", "UpstreamUnreachable"), condition
    with pytest.raises(RuntimeError, match="exited with 2") as failed:
        cache.start_pod()
    assert "connection refused" in str(failed.value)
