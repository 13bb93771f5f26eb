"""A real Kubernetes control plane on 127.0.0.1, for the tests, the benchmarks and the local quickstart.

etcd, kube-apiserver (RBAC, client-certificate admin in ``system:masters``, ServiceAccount token signing),
kube-controller-manager, kube-scheduler and kwok (fake nodes that move scheduled Pods to Running/Ready),
all built by ``hack/build control-plane`` into ``.cache/bin``.

    cluster = LocalCluster(Path("/tmp/c"))
    cluster.start()                   # ~5 s; raises BinariesMissing / PortInUse / ClusterError
    cluster.kubectl("get", "nodes")
    cluster.stop()

One module per concern: ``binaries`` (where hack/build put what), ``processes`` (start/stop by PID),
``ports``, ``poll`` (the one wait loop), ``pki`` and ``kubeconfig`` (files the servers and clients read),
``cluster`` (any cluster through a kubeconfig), ``local`` (the control plane itself), ``operator`` (the operator
as a local process) and ``cli`` (``hack/cluster``). Importing it needs only the standard library;
``cryptography`` and ``yaml`` are imported when a cluster starts.
"""

from .binaries import REPO, Binaries, bin_dir, find_kubectl, read_versions
from .cluster import (
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    RESTRICTED,
    Cluster,
    context_allowed,
    namespace_manifest,
)
from .errors import BinariesMissing, ClusterError, PortInUse
from .kubeconfig import write_private
from .local import DEFAULT_WORKDIR, LocalCluster
from .operator import OperatorProcess, start_operator
from .poll import wait_until
from .ports import pick_free_ports
from .processes import Proc, log_tail, set_pdeathsig, terminate

__all__ = [
    "DEFAULT_WORKDIR", "OPERATOR_NAMESPACE", "OPERATOR_SERVICE_ACCOUNT", "REPO", "RESTRICTED", "Binaries",
    "BinariesMissing", "Cluster", "ClusterError", "LocalCluster", "OperatorProcess", "PortInUse", "Proc", "bin_dir",
    "context_allowed", "find_kubectl", "log_tail", "namespace_manifest", "pick_free_ports", "read_versions",
    "set_pdeathsig", "start_operator", "terminate", "wait_until", "write_private",
]  # fmt: skip
