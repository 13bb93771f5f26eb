"""Fixtures of the fault suite: the fault proxy in front of kube-apiserver, a kubeconfig of the operator's
ServiceAccount that goes through it, and operator processes the tests may kill.

The control-plane fixtures (cluster, kube_client, namespace, operator_rbac_kubeconfig) come from
hack/pytest_localcluster.py, registered for the whole tree by tests/conftest.py. Tests here are marked
`faults` (and `integration`: they need the local control plane) automatically, so `python -m pytest tests -q`
runs them and `-m "not faults"` leaves them out.

The measured numbers are printed at the end of the session (even with -q): they are what the README and
issue 9 quote.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import localcluster
import pytest
import yaml
from _pytest.terminal import TerminalReporter
from faultkit import REPORT, report
from faultproxy import FaultProxy, kubeconfig_via
from localcluster import OperatorProcess, start_operator

HERE = Path(__file__).resolve().parent
# The coalescer's default backoff cap is 60 s. The faults end at a known moment, and waiting out a minute-long
# backoff after that proves nothing more than waiting out a few seconds: a short cap keeps the suite short.
OPERATOR_ENV = {"REGISTRY_OPERATOR_RETRY_MAX_SECONDS": "4"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (fault proxy, SIGKILLed operator; tests/faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    if REPORT:
        terminalreporter.write_sep("-", "fault suite: measured")
        for line in REPORT:
            terminalreporter.write_line(line)


NAMESPACE_READER = f"""\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: registry-operator-faults-namespaces
rules:
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: registry-operator-faults-namespaces
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: registry-operator-faults-namespaces
subjects:
  - kind: ServiceAccount
    name: {localcluster.OPERATOR_SERVICE_ACCOUNT}
    namespace: {localcluster.OPERATOR_NAMESPACE}
"""


@pytest.fixture(scope="module")
def namespace_reader(cluster: localcluster.Cluster, operator_rbac_kubeconfig: str) -> Iterator[None]:
    """Lets the operator's ServiceAccount list namespaces while this module's tests run.

    The operators here watch only their test's namespace (`--namespace NS`: the e2e session operator and
    other tests' Registries must be left alone). kopf then lists namespaces first; under the shipped RBAC that
    is forbidden and kopf retries for about 55 s before it falls back to the namespace it was given, so every
    start (51 of them in the SIGKILL test) would idle for a minute. The grant is removed afterwards."""
    cluster.apply(NAMESPACE_READER)
    yield
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", "registry-operator-faults-namespaces",
                    "--ignore-not-found", check=False)  # fmt: skip


@pytest.fixture
def fault_proxy(operator_rbac_kubeconfig: str, namespace_reader: None, tmp_path: Path) -> Iterator[FaultProxy]:
    """The proxy in front of the API server of the operator's kubeconfig, faults off. The seed of its
    schedule comes from FAULTS_SEED (to replay a run) or is random, and is printed. Every request it saw is
    written to `proxy-requests.jsonl` in the test's tmp_path afterwards, for the post-mortem of a failure."""
    cluster = yaml.safe_load(Path(operator_rbac_kubeconfig).read_text())["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(2**31))
    report(f"fault proxy seed {seed} (FAULTS_SEED={seed} replays the schedule)")
    with FaultProxy(cluster["server"], ca, seed=seed) as proxy:
        yield proxy
    with open(tmp_path / "proxy-requests.jsonl", "w") as out:
        for record in proxy.snapshot():
            out.write(json.dumps(dataclasses.asdict(record)) + "\n")


@pytest.fixture
def proxied_kubeconfig(fault_proxy: FaultProxy, operator_rbac_kubeconfig: str, tmp_path: Path) -> Path:
    """The operator's ServiceAccount kubeconfig, pointed at the fault proxy."""
    config = kubeconfig_via(yaml.safe_load(Path(operator_rbac_kubeconfig).read_text()), fault_proxy)
    path = tmp_path / "proxied.kubeconfig"
    localcluster.write_private(path, yaml.safe_dump(config))
    return path


class Operators:
    """Operator processes of one test, started with `start` and stopped (or found killed) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[OperatorProcess] = []

    def start(self, kubeconfig: Path | str, namespace: str, ready_timeout: float = 60) -> OperatorProcess:
        """The operator for `namespace` only (other tests' Registries are not its business), once kopf is live."""
        log = self.tmp_path / f"operator-{len(self.started)}.log"
        proc = start_operator(kubeconfig, log, args=["--namespace", namespace], env=OPERATOR_ENV,
                              ready_timeout=ready_timeout)  # fmt: skip
        self.started.append(proc)
        return proc

    @staticmethod
    def kill(proc: OperatorProcess) -> None:
        """SIGKILL: no shutdown handler, no flushed write, exactly what an OOM kill or a node loss does."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.process.wait(10)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def operators(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Operators]:
    ops = Operators(tmp_path)
    yield ops
    ops.stop_all()
    reports = [getattr(request.node, f"rep_{when}", None) for when in ("setup", "call")]
    if ops.started and any(r is not None and r.failed for r in reports):
        last = ops.started[-1]
        sys.stderr.write(f"----- last operator log ({last.log_path}) -----\n"
                         f"{localcluster.log_tail(last.log_path, 200)}\n")  # fmt: skip


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so the `operators` fixture knows whether the test failed."""
    report_ = yield
    setattr(item, f"rep_{report_.when}", report_)
    return report_
