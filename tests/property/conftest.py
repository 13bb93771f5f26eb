"""Fixtures of the property suite: its own audited control plane and the operator as its ServiceAccount.

The suite counts the operator's API writes from the kube-apiserver audit log, which needs flags the session
cluster of hack/pytest_localcluster.py does not start with. So it starts bench.cluster's `AuditedCluster`
(the benchmark's: the same audit policy, only the operator's ServiceAccount is logged, and a /16 Service range)
once per session, with the RBAC of manifests/, and runs the operator as that ServiceAccount through
localcluster's `start_operator`. Its results are printed in the terminal summary, pass or fail.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import localcluster
import pytest
from localcluster import OperatorProcess, start_operator

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a package at the repository root
    sys.path.insert(0, str(REPO))

from property_report import SUMMARY  # noqa: E402

# kwok nodes: 110 pods and 32 CPUs each; three batches of 50 Registries with token services and a few
# replicas live at once, and the next namespace's pods arrive while the last one is still being deleted.
NODES = 6


@pytest.fixture(scope="session")
def audited_cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """(bench.cluster.AuditedCluster, kubeconfig of the operator's ServiceAccount), started for this suite."""
    if pytestconfig.getoption("--kubeconfig") or pytestconfig.getoption("--cluster") not in (None, "local"):
        pytest.skip("the property suite reads the audit log of a local control plane it starts itself")
    from bench.cluster import start_cluster

    problem = None
    try:
        cluster, kubeconfig = start_cluster(tmp_path_factory.mktemp("property"), nodes=NODES)
    except localcluster.ClusterError as e:  # BinariesMissing included
        problem = str(e)
    if problem:
        pytest.fail(f"the audited control plane did not start: {problem}", pytrace=False)
    try:
        yield cluster, kubeconfig
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def property_operator(audited_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator (all namespaces) authenticated as its own ServiceAccount."""
    _, kubeconfig = audited_cluster
    proc = start_operator(kubeconfig, tmp_path_factory.mktemp("property-operator") / "operator.log")
    try:
        yield proc
    finally:
        proc.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, None)
    if lines:
        terminalreporter.write_sep("-", "property suite (tests/property)")
        for line in lines:
            terminalreporter.write_line(line)
