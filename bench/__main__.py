"""`python -m bench [--quick]`: the operator's performance on the local control plane, against a floor.

Starts its own control plane (hack/localcluster, with an audit log of the operator's ServiceAccount), runs the
phases below in one process and writes bench/results/ (results.json, results.md, results.png when matplotlib
is installed). Prints the Markdown table. Exits 0 whatever the numbers: it measures, it does not judge.

`--datapath-node` measures the data path on real pods instead (datapath-node.json; bench/datapath_node.py): a
control plane with the real node (root, `hack/build node`), 100 MiB pushed and pulled with crane through kube-proxy
to a token + TLS Registry, an htpasswd + TLS one, and its rendered pod without auth (TLS only) and without TLS.

`--scale 10,100,1000` runs the growth curve instead (scale.json, scale.md, scale.png): grow to each count in
turn and record what growing there cost the operator (CPU per reconcile, API reads and writes per reconcile,
time until all are Ready) and its RSS once at rest, with the load average. Results are written after each
count, so a run stopped early keeps the counts it reached.

1. memory at 0 Registries; 2. convergence (sequential, operator blocks and floor blocks alternating);
3. burst floor (operator stopped); 4. data path (operator running); 5. burst; 6. restart = full reconcile,
   counted; 7. rest window with periodic resyncs; 8. stuck: Registries on bad input, writes per minute once
   their status is written; 9. memory at the burst size, grow to the top size, memory, restart, memory;
10. gc: the read-only window and the time to collect `gc_blobs` blobs of `gc_mib` MiB, half garbage, on a
   filesystem and on S3 (bench/gc.py; the registry binary run directly, before the operator starts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import OPERATOR_DIR, REPO

if TYPE_CHECKING:
    from .datapath_node import NodePlan


@dataclass(frozen=True)
class Plan:
    runs: int
    block: int
    burst: int
    rest_window: float
    resync: float
    memory_top: int
    datapath_iterations: int
    nodes: int
    datapath_controls: bool = True  # the operator-direct and bcrypt4 variants
    restart_top: bool = True  # restart at memory_top too: resume cost and a fresh process's RSS
    pause: float = 1.0  # between sequential convergence runs
    stuck_window: float = 120.0  # the quiet window of the stuck phase, seconds
    stuck_settle: float = 60.0  # at most this long for the stuck Registries' operator to go quiet first
    # Secrets that are not the operator's (service-account tokens, TLS keys of other apps), there from the start:
    # what the operator must not hold in memory.
    unrelated_secrets: int = 0
    # Seconds at rest before memory is sampled at memory_top: past the operator's trim interval (phases.steady_rss).
    at_rest: float = 32.0
    gc_blobs: int = 1000  # the gc phase's storage: blobs (0: no gc phase) ...
    gc_mib: int = 1024  # ... and MiB in all


FULL = Plan(runs=20, block=5, burst=200, rest_window=300, resync=100, memory_top=1000, datapath_iterations=10,
            nodes=12, unrelated_secrets=10_000)  # fmt: skip
QUICK = Plan(runs=4, block=4, burst=20, rest_window=30, resync=10, memory_top=50, datapath_iterations=1, nodes=2,
             datapath_controls=False, restart_top=False, pause=0.5, stuck_window=15, stuck_settle=10,
             at_rest=3.0, gc_blobs=0)  # fmt: skip


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def environment(plan: Plan | NodePlan) -> dict[str, Any]:
    import localcluster

    versions = localcluster.read_versions()
    commit = _git("rev-parse", "--short", "HEAD")
    if OPERATOR_DIR == (REPO / "operator").resolve() and _git("status", "--porcelain", "--", "operator"):
        commit += "+dirty"
    elif OPERATOR_DIR != (REPO / "operator").resolve():
        commit = f"{OPERATOR_DIR} (checkout at {commit})"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg(),
        "operator_commit": commit,
        "operator_dir": str(OPERATOR_DIR),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "kubernetes": versions.get("KUBERNETES_VERSION"),
        "nodes": plan.nodes,
        "plan": plan.__dict__,
    }


@contextlib.asynccontextmanager
async def _bench(plan: Plan, workdir: Path, res: dict[str, Any]) -> AsyncIterator[Any]:
    """The control plane with the plan's unrelated Secrets, a Bench on it, and everything stopped afterwards
    (the operator's last log lines go into `res`, whatever happened)."""
    from . import phases, workload
    from .cluster import start_cluster

    log(f"starting the control plane ({plan.nodes} kwok nodes) in {workdir}")
    cluster, operator_kubeconfig = await asyncio.to_thread(start_cluster, workdir, plan.nodes)
    client = workload.admin_client(str(cluster.kubeconfig))
    b = phases.Bench(cluster, operator_kubeconfig, workdir, client, log=log)
    try:
        if plan.unrelated_secrets:
            log(f"{plan.unrelated_secrets} unrelated Secrets")
            await workload.unrelated_secrets(client, "bench-unrelated", plan.unrelated_secrets)
        yield b
    finally:
        if b.operator is not None:
            res.setdefault("operator_log_tail", b.operator.log_tail(40))
        await b.stop_operator()
        await client.close()
        await asyncio.to_thread(cluster.stop)


async def run(plan: Plan, workdir: Path, skip: set[str]) -> dict[str, Any]:
    from . import datapath, phases, workload

    res: dict[str, Any] = {"env": environment(plan)}
    async with _bench(plan, workdir, res) as b:
        client = b.client
        res["unrelated_secrets"] = plan.unrelated_secrets
        if "gc" not in skip and plan.gc_blobs:
            from . import gc

            log(f"gc: {plan.gc_blobs} blobs, {plan.gc_mib} MiB, half garbage, on a filesystem and on S3")
            res["gc"] = await asyncio.to_thread(gc.run, workdir / "gc", plan.gc_blobs, plan.gc_mib, log)
        await b.start_operator()
        await b.settle(quiet=3.0)
        memory = [{"registries": 0, "when": "fresh", **phases.rss_now(b)}]
        res["memory"] = {"levels": memory}

        if "convergence" not in skip:
            log(f"convergence: {plan.runs} runs each, blocks of {plan.block}")
            res["convergence"] = await phases.convergence(b, plan.runs, plan.block, plan.pause)
        await b.stop_operator()

        res["burst"] = {}
        if "burst" not in skip:
            log(f"burst floor: {plan.burst} Registries by a bare client")
            res["burst"]["floor"] = await phases.burst_floor(b, plan.burst)
            res["burst"]["floor"]["writes_per_registry"] = len(workload.children("x")) + 1

        await b.start_operator()
        await b.settle(quiet=2.0)
        if "datapath" not in skip:
            log(f"data path: {plan.datapath_iterations} iterations")
            res["datapath"] = await asyncio.to_thread(
                datapath.run,
                b.cluster.kubeconfig,
                workdir / "datapath",
                plan.datapath_iterations,
                controls=plan.datapath_controls,
                log=log,
            )
            await workload.delete_registries(client, "bench-datapath")
            await b.settle(quiet=2.0)

        grown = 0  # Registries that exist when the memory phase starts
        if "burst" not in skip:
            log(f"burst: {plan.burst} Registries at once")
            res["burst"]["operator"] = await phases.burst_operator(b, plan.burst)
            memory.append({"registries": plan.burst, "when": "after burst", **phases.rss_now(b)})

            log(f"restart with {plan.burst} Registries (resume = full reconcile), resync every {plan.resync:.0f} s")
            resync_env = {"REGISTRY_OPERATOR_RESYNC_SECONDS": str(plan.resync)}
            res["restart"] = await phases.restart(b, plan.burst, env=resync_env)
            memory.append({"registries": plan.burst, "when": "after restart", "rss": res["restart"]["rss"],
                           "hwm": res["restart"]["hwm"]})  # fmt: skip

            if "rest" not in skip:
                log(f"rest: {plan.rest_window:.0f} s window")
                res["rest"] = await phases.rest(b, plan.rest_window, plan.resync)
                res["rest"]["registries"] = plan.burst
                memory.append({"registries": plan.burst, "when": "after rest", **phases.rss_now(b)})

            if "stuck" not in skip:
                log(f"stuck: {len(phases.STUCK)} Registries on bad input, {plan.stuck_window:.0f} s window")
                res["stuck"] = await phases.stuck(b, plan.stuck_window, plan.stuck_settle)
            grown = plan.burst

        if "memory" not in skip and plan.memory_top > grown:
            log(f"memory: growing to {plan.memory_top} Registries")
            # Back to the default resync interval: a resync must not run while we grow and settle.
            await b.stop_operator()
            await b.start_operator()
            await b.settle(at_least=grown, quiet=3.0)
            res["grow"] = await phases.grow(b, "bench-mem", grown, plan.memory_top - grown)
            steady = await phases.steady_rss(b, plan.at_rest)
            memory.append({"registries": plan.memory_top, "when": "after growing", **steady})
            if not plan.restart_top:
                return res
            log(f"restart with {plan.memory_top} Registries")
            res["restart_top"] = await phases.restart(b, plan.memory_top)
            steady = await phases.steady_rss(b, plan.at_rest)
            memory.append({"registries": plan.memory_top, "when": "after restart", **steady})
        return res


async def run_scale(plan: Plan, workdir: Path, counts: list[int], out: Path) -> dict[str, Any]:
    """The growth curve: RSS at rest at 0 Registries, then `phases.scale` over `counts`."""
    from . import phases, report

    started = time.monotonic()
    res: dict[str, Any] = {"env": environment(plan), "mode": "scale", "unrelated_secrets": plan.unrelated_secrets}
    async with _bench(plan, workdir, res) as b:
        await b.start_operator()
        empty = {"registries": 0, **await phases.steady_rss(b, plan.at_rest), "load": os.getloadavg()}

        def checkpoint(levels: list[dict[str, Any]]) -> None:
            res["scale"] = {"levels": [empty, *levels]}
            res["seconds"] = time.monotonic() - started
            report.write(res, out, "scale")

        await phases.scale(b, counts, plan.at_rest, checkpoint)
        return res


def _counts(text: str) -> list[int]:
    counts = sorted({int(x) for x in text.split(",") if x.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive counts, e.g. 10,100,1000")
    return counts


# kwok nodes take 110 pods each: one node per 100 Registries leaves room for the rest of the cluster.
REGISTRIES_PER_NODE = 100


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small counts for CI (< 2 min)")
    parser.add_argument("--out", type=Path, help="default: bench/results, or bench/results/quick with --quick (the "
                        "README's table is rendered from bench/results: a smoke run must not replace its runs)")
    phases = ["convergence", "burst", "datapath", "rest", "stuck", "memory", "gc"]
    parser.add_argument("--skip", action="append", default=[], choices=phases, help="repeatable")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (cluster logs, audit log)")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only re-render the report from a file")
    parser.add_argument("--scale", type=_counts, metavar="N,N,...", help="the growth curve over these counts instead")
    parser.add_argument("--readme", action="store_true", help="only render README.md's table from the runs in --out")
    parser.add_argument("--datapath-node", action="store_true", help="the data path on real pods instead (real node; "
                        "--datapath-iterations, default 5, --datapath-mib, default 100)")
    parser.add_argument("--datapath-mib", type=int, default=100, help="image size with --datapath-node")
    seconds = ("rest_window", "resync", "stuck_window")
    for field in ("runs", "burst", *seconds, "memory_top", "datapath_iterations", "nodes", "unrelated_secrets",
                  "gc_blobs", "gc_mib"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=float if field in seconds else int)
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("quick" if args.quick else "")
    if args.readme:
        from . import report

        print(report.update_readme(REPO / "README.md", args.out.resolve()))
        return 0
    if args.report:
        from . import report

        print(report.write(json.loads(args.report.read_text()), args.out, args.report.stem))
        return 0

    if args.datapath_node:
        return run_datapath_node(args)
    plan = QUICK if args.quick else FULL
    overrides = {f: getattr(args, f) for f in plan.__dict__ if getattr(args, f, None) is not None}
    if args.scale and args.nodes is None:
        overrides["nodes"] = max(plan.nodes, -(-args.scale[-1] // REGISTRIES_PER_NODE))
    plan = Plan(**{**plan.__dict__, **overrides})
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    started = time.monotonic()
    try:
        if args.scale:
            res = asyncio.run(run_scale(plan, workdir, args.scale, args.out))
        else:
            res = asyncio.run(run(plan, workdir, set(args.skip)))
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.scale:
        res["mode"] = "quick" if args.quick else "full"
    res["seconds"] = time.monotonic() - started
    from . import report

    md = report.write(res, args.out, "scale" if args.scale else "results")
    print(md)
    log(f"results in {args.out}: {', '.join(sorted(p.name for p in args.out.iterdir()))}")
    if os.environ.get("BENCH_JSON"):
        print(json.dumps(res, indent=2, default=str))
    return 0


def run_datapath_node(args: argparse.Namespace) -> int:
    """`--datapath-node`: its own control plane (with the real node) and its own JSON, datapath-node.json."""
    from . import datapath_node, report

    plan = datapath_node.NodePlan(iterations=args.datapath_iterations or 5, mib=args.datapath_mib)
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-node-"))
    started = time.monotonic()
    res: dict[str, Any] = {"env": environment(plan), "mode": "datapath-node"}
    try:
        res["datapath_node"] = datapath_node.run(plan, workdir, log)
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    res["seconds"] = time.monotonic() - started
    print(report.write(res, args.out, "datapath-node"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
