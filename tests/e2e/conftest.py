"""Fixtures for the end-to-end suite: Registries reconciled by the operator on the local control plane, their
rendered pods run for real (by the real node's kubelet when the session has one, ``--real-node``, unless a
test says why it needs podrunner; else by podrunner), and real clients against them.

The control-plane fixtures (``cluster``, ``kube_client``, ...) come from hack/pytest_localcluster.py, which
tests/conftest.py registers. One operator process serves the whole e2e session, as one operator serves a
whole cluster; it keeps the suite within its time budget (each kopf start costs seconds).

``tests.support`` is imported by package name, so the repository root must be importable whatever pytest's
import mode and working directory are.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from localcluster import namespace_manifest  # noqa: E402
from localcluster.node import NODE_LABEL, NODE_SELECTOR_ANNOTATION  # noqa: E402

from tests.support.deployed import (  # noqa: E402
    POD_COUNTS,
    RUNNER_REASONS,
    VERSIONS,
    DeployedRegistry,
    create_registry,
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many Registry pods ran on the real node and how many on the pod runner, and why."""
    if POD_COUNTS:
        terminalreporter.write_sep("-", "registry pods")
        hint = "" if POD_COUNTS["real node"] else " (--real-node=auto runs them on a real node)"
        terminalreporter.write_line(
            f"{POD_COUNTS['real node']} on the real node (kubelet), "
            f"{POD_COUNTS['pod runner']} on the pod runner (local processes){hint}"
        )
        for why, count in RUNNER_REASONS.most_common() if POD_COUNTS["real node"] else ():
            terminalreporter.write_line(f"  pod runner, {count}: {why}")


def registry_spec(version: str, **extra: Any) -> dict[str, Any]:
    """A Registry spec clients on this machine can reach (127.0.0.1 in the certificate), with two htpasswd
    users whose passwords the operator generates."""
    spec: dict[str, Any] = {
        "version": version,
        "tls": {"ipAddresses": ["127.0.0.1"]},
        "auth": {"mode": "htpasswd", "users": [{"name": "alice"}, {"name": "bob"}]},
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="session")
def e2e_operator(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One operator for the e2e session, ready when kopf is live.

    It watches only the ``e2e-*`` namespaces: the integration tests start operators of their own in the same
    session, and two operators must never handle the same Registry.
    """
    from localcluster import start_operator

    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # A rotated pull credential waits for the kubelet's volume sync before copies get it (120 s); the pod runner
    # syncs when a test says so, so 5 s keeps the rotation test short without changing what it proves.
    proc = start_operator(cluster.kubeconfig, log, args=["--namespace", "e2e-*"],
                          env={"REGISTRY_OPERATOR_PULL_ROTATION_SECONDS": "5"})
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def pods_on_node(cluster) -> bool:
    """Whether the session's cluster has a real node to run Registry pods on (``--real-node``)."""
    return getattr(cluster, "node", None) is not None


@pytest.fixture(scope="session")
def make_namespace(cluster) -> Iterator[Callable[..., str]]:
    """make_namespace(prefix, on_node=False): namespaces (deleted at the end of the session) for registries that
    outlive one test; ``on_node``: its pods go to the real node (else to kwok's, which run nothing)."""
    created: list[str] = []

    def make(prefix: str, on_node: bool = False) -> str:
        name = f"e2e-{prefix}-{secrets.token_hex(3)}"
        annotations = {NODE_SELECTOR_ANNOTATION: NODE_LABEL} if on_node else None
        cluster.apply(namespace_manifest(name, annotations=annotations))
        created.append(name)
        return name

    yield make
    for name in created:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def deploy(
    e2e_operator: Any,
    kube_client: Any,
    make_namespace: Callable[..., str],
    pods_on_node: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., DeployedRegistry]]:
    """deploy(version, name="reg", pod=True, pod_runner="", **spec) -> a Ready Registry in a fresh namespace,
    its pod running: on the real node when the session has one, unless ``pod_runner`` says why the test needs
    podrunner (it drives what a kubelet does by itself, or the pod must reach something on loopback).

    Its pods are stopped at the end of the session; the operator's log is printed when it did not get Ready.
    """
    deployed: list[DeployedRegistry] = []

    def make(version: str, name: str = "reg", pod: bool = True, pod_runner: str = "", **spec: Any) -> DeployedRegistry:
        on_node = pods_on_node and not pod_runner
        ns = make_namespace(VERSIONS[version].replace(".", ""), on_node=on_node)
        workdir = tmp_path_factory.mktemp(f"{ns}-pods")
        try:
            reg = create_registry(kube_client, ns, name, registry_spec(version, **spec), workdir, on_node, pod_runner)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log tail ---\n{e2e_operator.log()[-6000:]}") from None
        deployed.append(reg)
        if pod:
            reg.start_pod()
        return reg

    yield make
    for reg in deployed:
        reg.stop()


@pytest.fixture(scope="session")
def shared(deploy: Callable[..., DeployedRegistry]) -> Callable[[str], DeployedRegistry]:
    """shared(version) -> the session's one Registry of that version (created on first use), deletion enabled,
    for the tests that do not change its spec."""
    registries: dict[str, DeployedRegistry] = {}

    def get(version: str) -> DeployedRegistry:
        if version not in registries:
            registries[version] = deploy(version, storage={"deleteEnabled": True})
        return registries[version]

    return get


@pytest.fixture(scope="session", params=sorted(VERSIONS), ids=VERSIONS.get)
def shared_registry(request: pytest.FixtureRequest, shared: Callable[[str], DeployedRegistry]) -> DeployedRegistry:
    """The shared Registry, once per version."""
    return shared(request.param)
