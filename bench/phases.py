"""The control-plane benchmarks: convergence, burst, rest, stuck, memory. Each returns plain data for the report."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, Service

from registry_operator import pki
from registry_operator.kinds import Registry

from . import workload
from .cluster import AuditedCluster, Operator, start_operator, writes_of
from .observe import Observer, registry_ready
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
    last = await b.settle(at_least=before["reconcile"] + n, quiet=3.0)  # see `grow`
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


# ---------------------------------------------------------------------------------------------- stuck

STUCK_NAMESPACE = "bench-stuck"
# Registry name -> (what is wrong, spec). Each input stays bad for the whole phase: the operator must say so
# once (status, an Event) and then leave the Registry alone.
STUCK: dict[str, tuple[str, dict[str, Any]]] = {
    "missing-password": ("referenced password Secret missing", {"auth": {"users": [
        {"name": "alice"}, {"name": "bob", "passwordSecretRef": {"name": "no-such-secret", "key": "password"}}]}}),
    "expired-tls": ("tls.mode Secret, the certificate expired", {
        "tls": {"mode": "Secret", "secretName": "expired-tls-cert"}, "auth": {"users": [{"name": "alice"}]}}),
    "name-taken": ("an unrelated Service has the Registry's name", {"auth": {"users": [{"name": "alice"}]}}),
    "user-at": ("user `ci@corp` (not a Secret key), generated password", {"auth": {"users": [
        {"name": "alice"}, {"name": "ci@corp"}]}}),
}  # fmt: skip


async def _stuck_inputs(client: AsyncClient, namespace: str) -> None:
    """What makes the inputs bad, created before the Registries: an expired certificate (and its key), and a
    plain Service that is nobody's child, named like the `name-taken` Registry."""
    ca = pki.issue_ca("bench expired CA")
    # Valid from 5 minutes ago (pki backdates) for one minute: expired 4 minutes ago.
    cert = pki.issue_server(ca, [f"expired-tls.{namespace}.svc"], validity=dt.timedelta(minutes=1))
    data = {"tls.crt": base64.b64encode(cert.cert_pem).decode(), "tls.key": base64.b64encode(cert.key_pem).decode()}
    await client.create(Secret(metadata=ObjectMeta(name="expired-tls-cert", namespace=namespace),
                               type="kubernetes.io/tls", data=data))  # fmt: skip
    taken = ServiceSpec(ports=[ServicePort(port=80)], selector={"app": "someone-else"})
    await client.create(Service(metadata=ObjectMeta(name="name-taken", namespace=namespace), spec=taken))


def _ready_condition(body: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"), {})


def _stuck_writes(events: list[dict[str, Any]], names: list[str]) -> dict[str, int]:
    """Writes per Registry: the Registry itself, children `<name>-...` or `<name>`, Events `<name>.<hash>`."""
    from .cluster import is_write

    ordered = sorted(names, key=len, reverse=True)
    out = dict.fromkeys(names, 0)
    out[""] = 0
    for event in events:
        if not is_write(event.get("verb", ""), (event.get("objectRef") or {}).get("resource", "")):
            continue
        obj = (event.get("objectRef") or {}).get("name") or ""
        owner = next((n for n in ordered if obj == n or obj.startswith((n + "-", n + "."))), "")
        out[owner] += 1
    return out


async def stuck(b: Bench, window: float, settle_timeout: float) -> dict[str, Any]:
    """Registries stuck on bad input (`STUCK`): the operator's writes per minute over a quiet `window` that
    starts once each has a status for its generation and the operator has gone quiet (or `settle_timeout`
    passed: an operator in a hot loop never goes quiet, and that is what the row must show).

    Goal: 0 writes after the first status write. Counted from the audit log in the phase's namespace only, so
    the other settled Registries (and their resyncs) do not count."""
    op = b.operator
    assert op is not None
    ns = STUCK_NAMESPACE
    await workload.ensure_namespace(b.client, ns)
    await _stuck_inputs(b.client, ns)
    wall0, t0 = time.time(), time.monotonic()
    rejected: dict[str, str] = {}
    for name, (_, spec) in STUCK.items():
        try:
            await b.client.create(Registry(metadata=ObjectMeta(name=name, namespace=ns), spec=spec))
        except ApiError as exc:  # the schema may refuse the input outright: the best outcome, nothing to write
            rejected[name] = exc.status.message or str(exc)
    created = [n for n in STUCK if n not in rejected]

    first_status: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(first_status) < len(created) and time.monotonic() < deadline:
        async for reg in b.client.list(Registry, namespace=ns):
            body = reg.to_dict()
            status = body.get("status") or {}
            name = body["metadata"]["name"]
            if name not in first_status and status.get("observedGeneration") == body["metadata"].get("generation"):
                first_status[name] = time.monotonic() - t0
        await asyncio.sleep(0.2)
    try:
        await b.settle(quiet=3.0, timeout=settle_timeout)
        settled = True
    except TimeoutError:
        settled = False

    c0, w0, cpu0 = op.counts(), time.time(), op.cpu()
    await asyncio.sleep(window)
    c1, w1, cpu1 = op.counts(), time.time(), op.cpu()
    events = b.cluster.audit_events(w0, w1, namespace=ns)
    per = _stuck_writes(events, created)
    writes = sum(per.values())
    minutes = (w1 - w0) / 60
    bodies = {r.metadata.name: r.to_dict() async for r in b.client.list(Registry, namespace=ns)}
    inputs: dict[str, Any] = {}
    for name, (what, _) in STUCK.items():
        ready = _ready_condition(bodies[name]) if name in bodies else {}
        inputs[name] = {
            "input": what,
            "rejected": rejected.get(name),
            "first_status": first_status.get(name),
            "ready": registry_ready(bodies[name]) if name in bodies else False,
            "reason": ready.get("reason"),
            "writes": per.get(name, 0),
            "writes_per_minute": per.get(name, 0) / minutes,
        }
    before_window = b.cluster.audit_counts(wall0, w0, namespace=ns)
    await workload.delete_registries(b.client, ns, wait_pods=False, timeout=120)
    return {
        "window": w1 - w0,
        "settled": settled,
        "inputs": inputs,
        "writes_before_window": before_window["write"],
        "write_total": writes,
        "writes_per_minute": writes / minutes,
        "writes": writes_of(Counter(f"{e.get('verb')} {(e.get('objectRef') or {}).get('resource')}" for e in events)),
        "reconciles_all": c1["reconcile"] - c0["reconcile"],  # every Registry's, resyncs included
        "operator_cpu": cpu1 - cpu0,
    }


# ---------------------------------------------------------------------------------------------- memory


async def grow(b: Bench, namespace: str, start: int, n: int, batch: int = 50) -> dict[str, Any]:
    """Create `n` more Registries (in concurrent batches) and wait until all are Ready and the operator is quiet.

    What the growth cost the operator, from the first create to its last reconcile: CPU seconds, reconciles,
    API reads and writes (audit log). A watch of the Registries times Ready to the event, at any count."""
    op = b.operator
    assert op is not None
    await workload.ensure_namespace(b.client, namespace)
    names = [f"mem-{i}" for i in range(start, start + n)]
    c0, cpu0 = op.counts(), op.cpu()
    async with Observer(b.client, namespace, kinds=["Registry"]) as obs:
        wall0, t0 = time.time(), time.monotonic()
        for i in range(0, n, batch):
            await asyncio.gather(*(workload.create_registry(b.client, namespace, x) for x in names[i : i + batch]))
        # Only the names added here: the namespace may hold no others (the memory phase grows in its own, after the
        # burst's Registries in another), so counting everything in it would wait for Registries that never come.
        await obs.wait_for(lambda: all(x in obs.ready for x in names), timeout=3600)
        ready = max(obs.ready[x] for x in names) - t0
    # Each new Registry is reconciled in full at least once; Ready can be seen before the operator's counters
    # say so, and settling on the old counts would close the window before it opened.
    last = await b.settle(at_least=c0["reconcile"] + n, quiet=5.0)
    audit = b.cluster.audit_counts(wall0, last + 0.5)
    return {
        "added": n,
        "ready": ready,
        "settled_after": last - wall0,
        "reconciles": op.counts()["reconcile"] - c0["reconcile"],
        "operator_cpu": op.cpu() - cpu0,
        "read_total": audit["read"],
        "write_total": audit["write"],
        "writes": writes_of(audit),
    }


def rss_now(b: Bench) -> dict[str, int]:
    assert b.operator is not None
    rss, hwm = b.operator.rss()
    return {"rss": rss, "hwm": hwm}


# The operator gives freed memory back (allocator.Trimmer) 2 s after its queue drains, but at most every 30 s:
# after a burst of reconciles the last trim may come up to 30 s after the last reconcile.
TRIM_SETTLE = 32.0


async def steady_rss(b: Bench, quiet: float = TRIM_SETTLE) -> dict[str, int]:
    """RSS once the operator is at rest: no reconcile for `quiet` seconds (its peak is VmHWM)."""
    await b.settle(quiet=quiet)
    return rss_now(b)


# ---------------------------------------------------------------------------------------------- scale


async def scale(b: Bench, counts: list[int], at_rest: float, done: Any = None) -> list[dict[str, Any]]:
    """Grow to each of `counts` (ascending) in one namespace; at each, what growing there cost and the RSS once
    at rest. `done(levels)` is called after each level, so a run cut short still leaves the levels it reached."""
    levels: list[dict[str, Any]] = []
    have = 0
    for n in sorted(counts):
        b.log(f"scale: growing from {have} to {n} Registries")
        grown = await grow(b, "bench-scale", have, n - have)
        steady = await steady_rss(b, at_rest)
        levels.append({"registries": n, **grown, **steady, "load": os.getloadavg()})
        b.log(f"scale: {n} Ready after {grown['ready']:.1f} s, RSS {steady['rss'] / 2**20:.1f} MiB, "
              f"load {levels[-1]['load'][0]:.1f}")  # fmt: skip
        have = n
        if done is not None:
            done(levels)
    return levels
