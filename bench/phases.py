"""The control-plane benchmarks: convergence, burst, rest, memory. Each returns plain data for the report."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import AsyncClient

from . import workload
from .cluster import AuditedCluster, Operator, start_operator, writes_of
from .observe import Observer
from .stats import summary

COUNTED = ("bcrypt.hashpw", "bcrypt.checkpw", "keygen.ec", "keygen.rsa")


@dataclass
class Bench:
    """Shared state of one benchmark run: the cluster, the operator process (at most one) and a client."""

    cluster: AuditedCluster
    operator_kubeconfig: Path
    workdir: Path
    client: AsyncClient
    log: Any = print
    operator: Operator | None = None
    operators_started: int = 0
    notes: list[str] = field(default_factory=list)

    async def start_operator(self, env: dict[str, str] | None = None) -> Operator:
        assert self.operator is None
        self.operators_started += 1
        self.operator = await asyncio.to_thread(
            start_operator, self.operator_kubeconfig, self.workdir, str(self.operators_started), env
        )
        return self.operator

    async def stop_operator(self) -> None:
        if self.operator is not None:
            await asyncio.to_thread(self.operator.stop)
            self.operator = None

    async def settle(self, at_least: int = 0, quiet: float = 3.0, timeout: float = 900) -> float:
        """Wait until the operator finished `at_least` reconciles and then did none for `quiet` seconds.
        Returns the time (epoch) of its last reconcile."""
        op = self.operator
        assert op is not None
        deadline = time.monotonic() + timeout
        while True:
            state = op.state()
            done = state.get("counts", {}).get("reconcile", 0)
            last = state.get("last_reconcile", 0.0)
            if done >= at_least and time.time() - max(last, op.started) >= quiet:
                return last
            if not op.alive():
                raise RuntimeError(f"the operator died:\n{op.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not settled: {done}/{at_least} reconciles")
            await asyncio.sleep(0.2)


def _delta(after: Counter[str], before: Counter[str], keys: tuple[str, ...] = COUNTED) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


# ---------------------------------------------------------------------------------------------- convergence


async def _operator_run(b: Bench, obs: Observer, name: str) -> dict[str, float]:
    keys = workload.children(name)
    t0 = time.monotonic()
    await workload.create_registry(b.client, obs.namespace, name)
    await obs.wait_for(lambda: name in obs.ready and obs.last_seen(keys) is not None, timeout=180)
    return {
        "children": obs.last_seen(keys) - t0,  # type: ignore[operator]
        "ready": obs.ready[name] - t0,
        "available": obs.available.get(name, float("nan")) - t0,
    }


async def _floor_run(b: Bench, obs: Observer, name: str) -> dict[str, float]:
    keys = workload.children(name)
    t0 = time.monotonic()
    await workload.floor_one(b.client, obs.namespace, name)
    await obs.wait_for(lambda: name in obs.available and obs.last_seen(keys) is not None, timeout=180)
    return {"children": obs.last_seen(keys) - t0, "ready": obs.available[name] - t0}  # type: ignore[operator]


async def convergence(b: Bench, runs: int, block: int, pause: float = 1.0) -> dict[str, Any]:
    """`runs` sequential Registries each for the operator and the floor, in alternating blocks of `block`
    (the floor needs the operator stopped: it would reconcile the floor's Registries)."""
    ns_op, ns_floor = "bench-conv-op", "bench-conv-floor"
    await workload.ensure_namespace(b.client, ns_op)
    await workload.ensure_namespace(b.client, ns_floor)
    op_runs: list[dict[str, float]] = []
    floor_runs: list[dict[str, float]] = []
    while len(op_runs) < runs:
        if b.operator is None:
            await b.start_operator()
        await b.settle(at_least=len(op_runs), quiet=1.5)
        async with Observer(b.client, ns_op) as obs:
            for _ in range(min(block, runs - len(op_runs))):
                op_runs.append(await _operator_run(b, obs, f"conv-{len(op_runs)}"))
                await asyncio.sleep(pause)
        await b.stop_operator()
        async with Observer(b.client, ns_floor) as obs:
            for _ in range(min(block, runs - len(floor_runs))):
                floor_runs.append(await _floor_run(b, obs, f"floor-{len(floor_runs)}"))
                await asyncio.sleep(pause)
        await workload.delete_registries(b.client, ns_floor)
        b.log(f"convergence: {len(op_runs)}/{runs} operator runs, {len(floor_runs)}/{runs} floor runs")
    await workload.delete_registries(b.client, ns_op)
    out: dict[str, Any] = {"runs": runs, "block": block}
    for what in ("children", "ready"):
        out[what] = {
            "operator": summary([r[what] for r in op_runs]),
            "floor": summary([r[what] for r in floor_runs]),
        }
    out["operator_available"] = summary([r["available"] for r in op_runs])
    out["samples"] = {"operator": op_runs, "floor": floor_runs}
    return out


# ---------------------------------------------------------------------------------------------- burst


async def burst_floor(b: Bench, n: int) -> dict[str, Any]:
    """`n` floor Registries applied concurrently by one bare client; until every Deployment is available."""
    assert b.operator is None, "the floor runs without the operator"
    ns = "bench-burst-floor"
    await workload.ensure_namespace(b.client, ns)
    names = [f"floor-{i}" for i in range(n)]
    keys = [k for name in names for k in workload.children(name)]
    async with Observer(b.client, ns) as obs:
        t0 = time.monotonic()
        await asyncio.gather(*(workload.floor_one(b.client, ns, name) for name in names))
        applied = time.monotonic() - t0
        await obs.wait_for(lambda: all(x in obs.available for x in names) and obs.last_seen(keys), timeout=1800)
        result = {
            "n": n,
            "applied": applied,
            "children": obs.last_seen(keys) - t0,  # type: ignore[operator]
            "ready": max(obs.available[x] for x in names) - t0,
            "ready_each": summary([obs.available[x] - t0 for x in names]),
        }
    await workload.delete_registries(b.client, ns, timeout=900)
    return result


async def burst_operator(b: Bench, n: int) -> dict[str, Any]:
    """`n` Registries created at once; until every one is Ready. The operator must be running."""
    op = b.operator
    assert op is not None
    ns = "bench-burst"
    await workload.ensure_namespace(b.client, ns)
    names = [f"reg-{i}" for i in range(n)]
    keys = [k for name in names for k in workload.children(name)]
    before, cpu0 = op.counts(), op.cpu()
    async with Observer(b.client, ns) as obs:
        wall0, t0 = time.time(), time.monotonic()
        await asyncio.gather(*(workload.create_registry(b.client, ns, name) for name in names))
        created = time.monotonic() - t0
        await obs.wait_for(lambda: all(x in obs.ready for x in names) and obs.last_seen(keys), timeout=1800)
        result = {
            "n": n,
            "created": created,
            "children": obs.last_seen(keys) - t0,  # type: ignore[operator]
            "ready": max(obs.ready[x] for x in names) - t0,
            "ready_each": summary([obs.ready[x] - t0 for x in names]),
        }
    last = await b.settle(quiet=3.0)
    result["operator_cpu"] = op.cpu() - cpu0
    audit = b.cluster.audit_counts(wall0, last + 0.5)
    result["settled_after"] = last - wall0
    result["writes_per_registry"] = audit["write"] / n
    result["reads_per_registry"] = audit["read"] / n
    result["writes"] = writes_of(audit)
    after = op.counts()
    result["reconciles_per_registry"] = (after["reconcile"] - before["reconcile"]) / n
    result["counted"] = _delta(after, before)
    return result


# ---------------------------------------------------------------------------------------------- rest


async def restart(b: Bench, expected: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Restart the operator (kopf resumes every Registry: a full reconcile) and count what that costs."""
    await b.stop_operator()
    wall0, t0 = time.time(), time.monotonic()
    op = await b.start_operator(env)
    last = await b.settle(at_least=expected, quiet=3.0, timeout=1800)
    counts = op.counts()
    cpu = op.cpu()
    audit = b.cluster.audit_counts(wall0, last + 0.5)
    rss, hwm = op.rss()
    return {
        "operator_cpu": cpu,
        "registries": expected,
        "seconds": last - wall0,
        "live_after": op.live - wall0,
        "reconciles": counts["reconcile"],
        "counted": {k: counts.get(k, 0) for k in COUNTED},
        "issued": {k: v for k, v in counts.items() if k.startswith("pki.issue_")},
        "writes": writes_of(audit),
        "write_total": audit["write"],
        "read_total": audit["read"],
        "rss": rss,
        "hwm": hwm,
        "wall": time.monotonic() - t0,
    }


async def rest(b: Bench, window: float, resync: float) -> dict[str, Any]:
    """Count the operator's API writes (audit log) and bcrypt/key generation over a quiet `window`."""
    op = b.operator
    assert op is not None
    c0, wall0, cpu0 = op.counts(), time.time(), op.cpu()
    await asyncio.sleep(window)
    c1, wall1, cpu1 = op.counts(), time.time(), op.cpu()
    audit = b.cluster.audit_counts(wall0, wall1)
    requests = {k.removeprefix("http."): c1.get(k, 0) - c0.get(k, 0) for k in c1 if k.startswith("http.")}
    return {
        "window": wall1 - wall0,
        "resync_interval": resync,
        "reconciles": c1["reconcile"] - c0["reconcile"],
        "operator_cpu": cpu1 - cpu0,
        "write_total": audit["write"],
        "read_total": audit["read"],
        "writes": writes_of(audit),
        "reads": {k: v for k, v in audit.items() if k not in ("write", "read") and k not in writes_of(audit)},
        "operator_requests": requests,
        "counted": _delta(c1, c0),
    }


# ---------------------------------------------------------------------------------------------- memory


async def grow(b: Bench, namespace: str, start: int, n: int, batch: int = 50) -> dict[str, Any]:
    """Create `n` more Registries (in concurrent batches) and wait until all are Ready and the operator is quiet."""
    await workload.ensure_namespace(b.client, namespace)
    names = [f"mem-{i}" for i in range(start, start + n)]
    t0 = time.monotonic()
    for i in range(0, n, batch):
        await asyncio.gather(*(workload.create_registry(b.client, namespace, x) for x in names[i : i + batch]))
    deadline = time.monotonic() + 3600
    while await workload.ready_count(b.client, namespace) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}: not all {n} Registries became Ready")
        await asyncio.sleep(2)
    ready = time.monotonic() - t0
    await b.settle(quiet=5.0)
    return {"added": n, "ready": ready}


def rss_now(b: Bench) -> dict[str, int]:
    assert b.operator is not None
    rss, hwm = b.operator.rss()
    return {"rss": rss, "hwm": hwm}
