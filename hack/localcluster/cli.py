"""``hack/cluster``: start, inspect and stop the local control plane from a shell."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .binaries import REPO
from .cluster import crd_files
from .errors import ClusterError
from .local import DEFAULT_WORKDIR, LocalCluster
from .node import NodeUnavailable, RealNode, preflight
from .operator import start_operator
from .processes import pid_alive


def _fmt_mib(n: int | None) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="hack/cluster",
        description="A local Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, kwok fake nodes). "
        "Build it first: hack/build control-plane.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("REGISTRY_OPERATOR_CLUSTER_DIR", DEFAULT_WORKDIR)),
        help="state, logs, PKI and kubeconfig (default: .cache/cluster)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane (harmless when it runs already)")
    up.add_argument(
        "--nodes", type=int, default=None, help="number of kwok fake nodes (default 1, or 0 with a real node)"
    )
    up.add_argument(
        "--real-node",
        nargs="?",
        const="yes",
        choices=("yes", "auto"),
        default=None,
        help="add a real node (containerd, kubelet, kube-proxy, CoreDNS; needs root and hack/build node); "
        "'auto': fall back to kwok, saying why, where this machine cannot run one",
    )
    up.add_argument(
        "--port-base",
        type=int,
        default=None,
        help="use consecutive ports from this one (etcd, etcd peer, apiserver, controller-manager, "
        "scheduler, kwok) instead of random free ones",
    )
    up.add_argument("--no-crds", action="store_true", help="do not install crds/*.yaml")
    sub.add_parser("down", help="stop what `up` started (by PID)")
    sub.add_parser("status", help="show components, PIDs, RSS and readiness")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    rb = sub.add_parser(
        "operator-kubeconfig",
        help="apply the RBAC objects of manifests/ and write a kubeconfig with a TokenRequest token of the "
        "operator's ServiceAccount; prints its path",
    )
    rb.add_argument("--output", type=Path, default=None, help="default: <workdir>/operator.kubeconfig")
    sub.add_parser(
        "operator",
        help="run the operator as a local process under its ServiceAccount (RBAC from manifests/), detached, "
        "log <workdir>/logs/operator.log; `down` stops it. Harmless when it runs already",
    )
    reg = sub.add_parser("register", help="record an extra process (e.g. the operator) for `down` to stop")
    reg.add_argument("name")
    reg.add_argument("pid", type=int)
    reg.add_argument("--log", default="")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[hack/cluster] {msg}", file=sys.stderr)

    real_node = getattr(args, "real_node", None)
    if real_node == "auto":
        try:
            preflight()
        except NodeUnavailable as e:
            log(f"{e}\n  -> falling back to kwok nodes only: pods will not run (their Registries still become Ready)")
            real_node = None
    nodes = getattr(args, "nodes", None)
    cluster = LocalCluster(
        args.workdir,
        detach=True,
        log=log,
        nodes=(0 if real_node else 1) if nodes is None else nodes,
        real_node=bool(real_node),
        port_base=getattr(args, "port_base", None),
        crd_dir=None if getattr(args, "no_crds", False) else REPO / "crds",
    )
    if args.command == "up":
        try:
            cluster.start()
        except ClusterError as e:
            log(f"ERROR: {e}")
            return 1
        st = cluster.status()
        for name, c in st["components"].items():
            log(f"  {name:<24} pid {c['pid']:<8} port {c['port'] or '-':<6} rss {_fmt_mib(c['rss'])}")
        if cluster.crds:
            log(f"  CRDs: {', '.join(cluster.crds)}")
        elif cluster.crd_dir is not None and not crd_files(cluster.crd_dir):
            log(f"  no CRDs installed: {os.path.relpath(cluster.crd_dir, REPO)}/ has no *.yaml files yet")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command == "kubeconfig":
        print(cluster.kubeconfig)
        return 0
    running = cluster.adopt_state()
    if args.command in ("operator-kubeconfig", "operator", "register") and not running:
        log(f"the cluster in {args.workdir} is not running: hack/cluster up")
        return 1
    if args.command == "operator-kubeconfig":
        try:
            ns, sa = cluster.apply_rbac()
            out = cluster.token_kubeconfig(args.output or cluster.workdir / "operator.kubeconfig", ns, sa)
        except ClusterError as e:
            log(f"ERROR: {e}")
            return 1
        print(out)
        return 0
    if args.command == "operator":
        return _start_operator(cluster, log)
    if args.command == "register":
        cluster.register_process(args.name, args.pid, args.log)
        return 0
    if args.command == "down":
        if not cluster.procs and not RealNode.owned_by(cluster.workdir):
            log(f"nothing to stop (no {cluster.state_file})")
            return 0
        cluster.stop()
        log("stopped")
        return 0
    if args.command == "status":
        if not cluster.procs:
            print(f"not running (no {cluster.state_file})")
            return 3
        st = cluster.status()
        print(f"server:     {st['server']}  ({'ready' if st['ready'] else 'NOT ready'})")
        print(f"kubeconfig: {st['kubeconfig']}")
        for name, c in st["components"].items():
            print(
                f"  {name:<24} pid {c['pid']:<8} {'running' if c['alive'] else 'DEAD':<8}"
                f" port {c['port'] or '-':<6} rss {_fmt_mib(c['rss'])}"
            )
        return 0 if running and st["ready"] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())


def _start_operator(cluster: LocalCluster, log: Callable[[str], None]) -> int:
    """The quickstart's operator: a detached local process, recorded for `down`."""
    known = (cluster.load_state() or {}).get("extra_processes", {}).get("operator")
    if known and pid_alive(known["pid"], known.get("starttime")):
        log(f"operator already running: pid {known['pid']}, log {known['log']}")
        return 0
    try:
        ns, sa = cluster.apply_rbac()
        kubeconfig = cluster.token_kubeconfig(cluster.workdir / "operator.kubeconfig", ns, sa)
        log_path = cluster.logs / "operator.log"
        proc = start_operator(kubeconfig, log_path, detach=True)
    except (ClusterError, AssertionError) as e:
        log(f"ERROR: {e}")
        return 1
    cluster.register_process("operator", proc.pid, str(log_path))
    log(f"operator running as {ns}/{sa}: pid {proc.pid}, log {log_path}")
    return 0
