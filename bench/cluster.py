"""The local control plane with an audit log, and the operator as a counted subprocess.

`AuditedCluster` is hack/localcluster's `LocalCluster` plus `--audit-policy-file/--audit-log-path`: every
request the operator's ServiceAccount makes is logged (Metadata level, nothing else is), which is the most
honest count of its API traffic. The operator runs as that ServiceAccount (RBAC from manifests/), under
`bench.opwrap` for the in-process counters.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localcluster  # noqa: E402  (hack/, put on sys.path by .paths)

from .paths import OPERATOR_DIR, REPO

OPERATOR_USER = f"system:serviceaccount:{localcluster.OPERATOR_NAMESPACE}:{localcluster.OPERATOR_SERVICE_ACCOUNT}"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
# Created, but they store nothing: questions to the API server (the operator's startup permission check).
QUESTIONS = {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "subjectaccessreviews", "tokenreviews"}


def is_write(verb: str, resource: str) -> bool:
    return verb in WRITE_VERBS and resource not in QUESTIONS
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""


# localcluster's /24 holds about 250 ClusterIP Services: 1000 Registries need more. Same first address
# (10.0.0.1, in the apiserver's certificate), larger range.
SERVICE_CIDR = "10.0.0.0/16"


class AuditedCluster(localcluster.LocalCluster):
    """LocalCluster whose kube-apiserver audits the operator's ServiceAccount (only) to `audit_log`, with a
    Service range large enough for a thousand Registries."""

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.jsonl"

    def _spawn(self, name: str, args: Sequence[str]) -> localcluster.Proc:
        args = [f"--service-cluster-ip-range={SERVICE_CIDR}" if a.startswith("--service-cluster-ip-range=") else a
                for a in args]  # fmt: skip
        if name == "kube-apiserver":
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json", "--audit-log-maxsize=0"]  # fmt: skip
        return super()._spawn(name, args)

    def audit_events(
        self, since: float, until: float | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """The operator's audit events received in [since, until) (epoch seconds), in `namespace` if given."""
        try:
            lines = self.audit_log.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            when = _epoch(event.get("requestReceivedTimestamp"))
            if when < since or (until is not None and when >= until):
                continue
            if namespace is not None and (event.get("objectRef") or {}).get("namespace") != namespace:
                continue
            out.append(event)
        return out

    def audit_counts(self, since: float, until: float | None = None, namespace: str | None = None) -> Counter[str]:
        """Operator requests completed in [since, until) (epoch seconds), by verb and `write`/`read` totals."""
        counts: Counter[str] = Counter()
        for event in self.audit_events(since, until, namespace):
            verb = event.get("verb", "?")
            resource = (event.get("objectRef") or {}).get("resource", "?")
            sub = (event.get("objectRef") or {}).get("subresource")
            counts[f"{verb} {resource}{'/' + sub if sub else ''}"] += 1
            counts["write" if is_write(verb, resource) else "read"] += 1
        return counts


def _epoch(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def writes_of(counts: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in sorted(counts.items()) if " " in k and is_write(*k.split(" ")[:2])}


# ------------------------------------------------------------------------------------------------ operator


@dataclass
class Operator:
    """`python -m bench.opwrap` (the operator plus counters) as a subprocess."""

    process: subprocess.Popen[bytes]
    counters: Path
    log_path: Path
    liveness: str
    started: float  # epoch seconds: process started
    live: float = 0.0  # epoch seconds: kopf served its liveness endpoint

    @property
    def pid(self) -> int:
        return self.process.pid

    def counts(self) -> Counter[str]:
        for _ in range(20):
            try:
                return Counter(json.loads(self.counters.read_text())["counts"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        return Counter()

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.counters.read_text())
        except (OSError, ValueError):
            return {}

    def rss(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values["VmRSS"], values["VmHWM"]

    def cpu(self) -> float:
        """CPU seconds (user + system) the operator process has used so far."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, n: int = 60) -> str:
        return localcluster.log_tail(self.log_path, n)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        localcluster.terminate(self.pid, timeout=timeout, popen=self.process)


def start_operator(
    kubeconfig: Path,
    workdir: Path,
    tag: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    operator_dir: Path = OPERATOR_DIR,
) -> Operator:
    """Start the operator (all namespaces, INFO logging) and wait until kopf serves its liveness endpoint."""
    counters = workdir / f"operator-{tag}.counters.json"
    log_path = workdir / f"operator-{tag}.log"
    started = time.time()
    proc = localcluster.start_operator(
        kubeconfig, log_path, ["--all-namespaces"],
        {"REGISTRY_BENCH_OPERATOR_DIR": str(operator_dir), "LOG_LEVEL": "INFO", **(env or {})}, timeout,
        entry=["-m", "bench.opwrap", str(counters), "--"], pythonpath=[operator_dir, REPO],
    )  # fmt: skip
    return Operator(proc.process, counters, log_path, proc.liveness_url, started, live=time.time())


def start_cluster(workdir: Path, nodes: int, log: Any = None) -> tuple[AuditedCluster, Path]:
    """The audited control plane and a kubeconfig of the operator's ServiceAccount."""
    cluster = AuditedCluster(workdir / "cluster", nodes=nodes, log=log)
    cluster.start()
    try:
        ns, sa = cluster.apply_rbac(REPO / "manifests")
        kubeconfig = cluster.token_kubeconfig(workdir / "operator.kubeconfig", ns, sa)
    except BaseException:
        cluster.stop()
        raise
    return cluster, kubeconfig
