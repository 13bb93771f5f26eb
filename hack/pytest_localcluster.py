"""pytest plugin: a Kubernetes cluster for the integration and e2e tests, and the operator running against it.

Registered for the whole test tree by tests/conftest.py (``pytest_plugins``), so tests/integration and
tests/e2e share ONE session-scoped control plane. Importing this module costs nothing (standard library only);
a cluster starts only when a test asks for one of the fixtures below.

Fixtures (scope):
  cluster (session)        localcluster.Cluster: .kubeconfig, .kubectl(*args, input=, check=), .apply(yaml),
                           .install_crds(), .create_token(ns, sa), .token_kubeconfig(path, ns, sa); a
                           LocalCluster started here unless --kubeconfig / --cluster=kind is given
  kubeconfig (session)     str path of the admin kubeconfig
  kube_client (session)    lightkube.Client (sync) on that kubeconfig
  async_kube_client        lightkube.AsyncClient (function scope); use it inside one event loop
  namespace                str name of a fresh namespace (its default ServiceAccount exists), deleted after
  wait_for                 wait_for(check, timeout=30, what=..., interval=0.2): poll until truthy
  operator_factory         start(kubeconfig=None, args=None, env=None, ready_timeout=60) -> OperatorProcess
  operator                 OperatorProcess: `python -m registry_operator --all-namespaces`, admin kubeconfig,
                           ready when kopf serves its liveness endpoint
  operator_rbac_kubeconfig (session) str path of a kubeconfig with a TokenRequest token of the operator's
                           ServiceAccount, after applying the RBAC objects of manifests/
  operator_with_rbac       OperatorProcess running with operator_rbac_kubeconfig

Options (tests/conftest.py registers them): --cluster=local|kubeconfig|kind, --kubeconfig=PATH,
--allowed-contexts=PATTERN[,PATTERN], --cluster-nodes=N, --keep-cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

HACK = Path(__file__).resolve().parent
if str(HACK) not in sys.path:
    sys.path.insert(0, str(HACK))

import localcluster  # noqa: E402  (standard library only at import time)
from localcluster import OperatorProcess, start_operator  # noqa: E402
from localcluster.node import NodeUnavailable, RealNode, preflight  # noqa: E402

REPO = localcluster.REPO
DEFAULT_ALLOWED_CONTEXTS = "registry-operator-local,kind-*,kwok-*"
TEST_NAMESPACE_LABEL = "registry-operator.test/session"

# One cluster per pytest process, whichever conftest asks first.
_SESSION: dict[str, object] = {}
_report_key = pytest.StashKey[dict]()


# ----------------------------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("registry-operator cluster", "Kubernetes cluster for integration/e2e tests")
    group.addoption(
        "--cluster",
        choices=("local", "kubeconfig", "kind"),
        default=None,
        help="local: start etcd+kube-apiserver+controllers+kwok on 127.0.0.1 from hack/build's binaries "
        "(default); kubeconfig: use --kubeconfig; kind: a kind cluster through pytest-kind (needs Docker)",
    )
    group.addoption(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="run against an existing cluster; its current context must match --allowed-contexts",
    )
    group.addoption(
        "--allowed-contexts",
        default=DEFAULT_ALLOWED_CONTEXTS,
        metavar="PATTERNS",
        help=f"comma-separated fnmatch patterns of kubeconfig contexts the tests may touch "
        f"(default: {DEFAULT_ALLOWED_CONTEXTS})",
    )
    group.addoption("--cluster-nodes", type=int, default=1, help="kwok fake nodes of the local cluster")
    group.addoption(
        "--real-node",
        choices=("no", "auto", "yes"),
        default=os.environ.get("REGISTRY_OPERATOR_REAL_NODE", "no"),
        help="add a real node (containerd, kubelet, kube-proxy, CoreDNS) to the local cluster: yes (fail when "
        "this machine cannot), auto (skip the real-node tests, saying why) or no (default; env "
        "REGISTRY_OPERATOR_REAL_NODE)",
    )
    group.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the local control plane running after the session (it is then detached; stop it with "
        "`hack/cluster --workdir DIR down`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs the local control plane (hack/cluster)")
    config.addinivalue_line("markers", "e2e: runs the real registry and real clients")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration and tests/e2e get their marker automatically, so
    `-m "not integration and not e2e"` selects exactly the unit tests."""
    for item in items:
        parts = Path(str(item.path)).parts
        if "tests" in parts:
            sub = parts[parts.index("tests") + 1 : parts.index("tests") + 2]
            if sub == ("integration",):
                item.add_marker(pytest.mark.integration)
            elif sub == ("e2e",):
                item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    item.stash.setdefault(_report_key, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_report_key, {})
    return any(r.failed for r in reports.values())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    info = _SESSION.get("summary")
    if info:
        terminalreporter.write_sep("-", "local control plane")
        terminalreporter.write_line(str(info))


# ----------------------------------------------------------------------------------------------- cluster


def _start_local(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> localcluster.LocalCluster:
    keep = config.getoption("--keep-cluster")
    workdir = tmp_path_factory.mktemp("cluster", numbered=True)
    missing: str | None = None
    try:
        binaries = localcluster.Binaries.locate()
    except localcluster.BinariesMissing as e:
        missing = str(e)
    if missing:  # outside the except block: no "During handling of the above exception" noise
        pytest.fail(
            f"{missing}\n(Integration tests need it; deselect them with -m 'not integration and not e2e'.)",
            pytrace=False,
        )
    real_node = config.getoption("--real-node")
    if real_node == "auto":
        try:
            preflight()
            real_node = "yes"
        except NodeUnavailable as e:
            _SESSION["no_real_node"] = str(e)
            real_node = "no"
    if real_node == "no":
        _SESSION.setdefault("no_real_node", "no real node in this session (--real-node=no)")
    cluster = localcluster.LocalCluster(
        workdir,
        nodes=config.getoption("--cluster-nodes"),
        binaries=binaries,
        detach=keep,
        real_node=real_node == "yes",
        log=lambda msg: sys.stderr.write(f"[localcluster] {msg}\n"),
    )
    problem = None
    try:
        cluster.start()
    except localcluster.ClusterError as e:
        problem = str(e)
    if problem:
        pytest.fail(f"the local control plane did not start: {problem}\nlogs: {cluster.logs}", pytrace=False)
    rss = ", ".join(f"{n} {v / 2**20:.0f} MiB" for n, v in cluster.rss().items() if v)
    _SESSION["summary"] = (
        f"started in {cluster.timings.steps.get('total', 0):.1f}s ({cluster.timings}); "
        f"RSS after start: {rss}; workdir {workdir}"
    )
    return cluster


def _external(config: pytest.Config, kubeconfig: str) -> localcluster.Cluster:
    problem = None
    try:
        cluster = localcluster.Cluster(kubeconfig)
        context = cluster.current_context()
    except localcluster.ClusterError as e:
        problem = str(e)
    if problem:
        pytest.fail(f"cannot use --kubeconfig={kubeconfig}: {problem}", pytrace=False)
    allowed = [p.strip() for p in config.getoption("--allowed-contexts").split(",") if p.strip()]
    if not localcluster.context_allowed(context, allowed):
        pytest.exit(
            f"refusing to run tests against context {context!r} of {kubeconfig}: it does not match "
            f"--allowed-contexts={','.join(allowed)}",
            returncode=4,
        )
    try:
        cluster.install_crds(REPO / "crds")
    except localcluster.ClusterError as e:
        problem = str(e)
    if problem:
        pytest.fail(f"cannot install crds/ into the cluster of --kubeconfig={kubeconfig}: {problem}", pytrace=False)
    return cluster


def _start_kind(config: pytest.Config) -> tuple[localcluster.Cluster, Callable[[], None]]:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip(
            "--cluster=kind needs a working Docker daemon, which this machine does not have "
            "(use the default --cluster=local)"
        )
    try:
        from pytest_kind import KindCluster
    except ImportError:
        pytest.skip("--cluster=kind needs pytest-kind: pip install -e '.[kind]'")
    kind = KindCluster("registry-operator")
    kind.create()
    cluster = localcluster.Cluster(str(kind.kubeconfig_path))
    cluster.install_crds(REPO / "crds")
    return cluster, (lambda: None if config.getoption("--keep-cluster") else kind.delete())


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The session's cluster (see module docstring); started once per pytest process."""
    if "cluster" in _SESSION:
        yield _SESSION["cluster"]
        return
    mode = pytestconfig.getoption("--cluster")
    kubeconfig = pytestconfig.getoption("--kubeconfig")
    if mode is None:
        mode = "kubeconfig" if kubeconfig else "local"
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if mode == "kubeconfig":
        if not kubeconfig:
            raise pytest.UsageError("--cluster=kubeconfig needs --kubeconfig=PATH")
        c = _external(pytestconfig, kubeconfig)
    elif mode == "kind":
        c, cleanup = _start_kind(pytestconfig)
    else:
        c = _start_local(pytestconfig, tmp_path_factory)
        if not pytestconfig.getoption("--keep-cluster"):
            cleanup = c.stop
        else:
            c.save_state()
    _SESSION["cluster"] = c
    try:
        yield c
    finally:
        _SESSION.pop("cluster", None)
        cleanup()


@pytest.fixture(scope="session")
def real_node(cluster) -> RealNode:
    """The session cluster's real node (``--real-node``); the test is skipped, saying why, without one."""
    node = getattr(cluster, "node", None)
    if node is None:
        pytest.skip(str(_SESSION.get("no_real_node", "the cluster under test has no real node of ours")))
    return node


@pytest.fixture(scope="session")
def kubeconfig(cluster) -> str:
    return str(cluster.kubeconfig)


@pytest.fixture(scope="session")
def kube_client(kubeconfig: str):
    """lightkube.Client (sync) with the admin kubeconfig."""
    from lightkube import Client, KubeConfig

    client = Client(KubeConfig.from_file(kubeconfig), field_manager="registry-operator-tests")
    yield client
    with contextlib.suppress(Exception):
        client._client._client.close()


@pytest.fixture
def async_kube_client(kubeconfig: str):
    """lightkube.AsyncClient with the admin kubeconfig. Use it inside one event loop (asyncio.run(...) in the
    test, or an async test plugin)."""
    import asyncio

    from lightkube import AsyncClient, KubeConfig

    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="registry-operator-tests")
    yield client
    with contextlib.suppress(Exception):
        asyncio.run(client.close())


def _namespace_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "test"
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test (its `default` ServiceAccount exists); deleted afterwards (not waited
    for). Pass --keep-cluster to keep failed tests' namespaces for inspection."""
    name = _namespace_name(request)
    cluster.apply(localcluster.namespace_manifest(name, labels={TEST_NAMESPACE_LABEL: str(os.getpid())}))
    localcluster.wait_until(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30,
        f"ServiceAccount default in namespace {name}",
        interval=0.2,
    )
    yield name
    if _test_failed(request) and request.config.getoption("--keep-cluster"):
        return
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """wait_for(check, timeout=30, what="condition", interval=0.2): poll until check() returns something
    truthy (exceptions count as "not yet") and return it; on timeout AssertionError with the last error."""

    def wait(check: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.2):
        return localcluster.wait_until(check, timeout, what, interval)

    return wait


# ----------------------------------------------------------------------------------------------- operator


@pytest.fixture
def operator_factory(cluster, request: pytest.FixtureRequest, tmp_path: Path):
    """Start operator processes:

        factory(kubeconfig=None, args=None, env=None, ready_timeout=60) -> OperatorProcess

    Runs `python -m registry_operator --all-namespaces --liveness=http://127.0.0.1:<free port>/healthz` with
    KUBECONFIG set (admin kubeconfig unless given) and waits until kopf serves that liveness endpoint (kopf
    starts it once its startup handlers and login are done). `args` replaces `--all-namespaces` (e.g.
    ["--namespace", ns]); the liveness flag is always added. All processes are stopped after the test; when
    the test failed their logs are printed (shown as captured teardown output)."""
    started: list[OperatorProcess] = []

    def start(
        kubeconfig: str | Path | None = None,
        args: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60,
    ) -> OperatorProcess:
        proc = start_operator(
            kubeconfig or cluster.kubeconfig, tmp_path / f"operator-{len(started)}.log", args, env, ready_timeout
        )
        started.append(proc)
        return proc

    yield start
    failed = _test_failed(request)
    for proc in started:
        proc.stop()
        if failed:
            sys.stderr.write(
                f"----- operator log ({proc.log_path}) -----\n{localcluster.log_tail(proc.log_path, 200)}\n"
            )


@pytest.fixture
def operator(operator_factory) -> OperatorProcess:
    """The operator (`python -m registry_operator --all-namespaces`) with the admin kubeconfig."""
    return operator_factory()


@pytest.fixture(scope="session")
def operator_rbac_kubeconfig(cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Apply the Namespace/ServiceAccount/(Cluster)Role(Binding)s of manifests/ (rendered with
    `kubectl kustomize` when there is a kustomization) and return a kubeconfig carrying a TokenRequest token
    of the operator's ServiceAccount, so missing or excessive permissions show up in tests."""
    try:
        sa_ns, sa_name = cluster.apply_rbac(REPO / "manifests")
    except localcluster.ClusterError as e:
        pytest.fail(str(e), pytrace=False)
    path = tmp_path_factory.mktemp("operator-rbac") / "kubeconfig"
    cluster.token_kubeconfig(path, sa_ns, sa_name)
    return str(path)


@pytest.fixture
def operator_with_rbac(operator_factory, operator_rbac_kubeconfig: str) -> OperatorProcess:
    """The operator authenticated as its own ServiceAccount (RBAC from manifests/)."""
    return operator_factory(kubeconfig=operator_rbac_kubeconfig)
