"""Token issuance throughput and latency on loopback: cold (a bcrypt check per request: every
request is a different user's first login), cached (same credentials again) and anonymous; each
sequentially and with concurrent clients. Then one registry against an index: cached issuance from a
token service for one Registry and from one for ``--joined`` Registries (a rule per registry, requests
spread over their audiences), same clients, runs interleaved, printed side by side with each service's
CPU time per token (steadier than rates on shared cores). Prints numbers, asserts nothing.

Against a floor and a peer, same clients: the floor is the token service's own server answering a token signed
at start (bench/token/floor.py: HTTP and aiohttp, nothing else); the peer is distribution 2.8's reference
token server (contrib/token-server, ``hack/build token_server``), when built: it checks the password with
bcrypt on every request (no cache), so its cached runs are as slow as its cold ones and are fewer.

Usage: python bench/token/bench_token.py [--requests 2000] [--cold 40] [--cost 10] [--concurrency 1 8]
                                         [--joined 10] [--rounds 4] [--peer-requests 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
from common import (
    ISSUER,
    REPO_ROOT,
    SERVICE,
    free_port,
    joined_services,
    per_registry_access,
    start_token_service,
    stop,
    wait_for_port,
    write_service_files,
)

SCOPE = "repository:team-a/app:pull,push"
PEER_SCOPE = "repository:alice/app:pull,push"


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # token endpoint
    pid: int | None = None  # the serving process, when its CPU time is to be read
    scope: str = SCOPE  # what to ask for: a scope the target grants alice


@dataclass(frozen=True)
class Result:
    label: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int
    cpu: float = 0.0  # the service's CPU seconds during the run, when measured

    @property
    def cpu_per_token_us(self) -> float:
        return self.cpu / self.count * 1e6

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def quantiles_ms(self) -> tuple[float, float]:
        """p50 and p99 in milliseconds."""
        q = statistics.quantiles(self.latencies, n=100) if len(self.latencies) > 1 else self.latencies * 99
        return q[49] * 1000, q[98] * 1000

    def row(self) -> str:
        p50, p99 = self.quantiles_ms()
        return f"{self.label:<42} {self.count:>6} {self.rate:>10.0f} {p50:>9.2f} {p99:>9.2f} {self.errors:>6}"

    def __add__(self, other: Result) -> Result:
        """Interleaved rounds of one run, pooled: their requests, wall time and latencies add up."""
        return Result(
            self.label, self.count + other.count, self.seconds + other.seconds,
            self.latencies + other.latencies, self.errors + other.errors, self.cpu + other.cpu,
        )  # fmt: skip


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def run(
    target: Target,
    label: str,
    headers: Sequence[dict[str, str]],
    concurrency: int,
    services: Sequence[str] = (SERVICE,),
) -> Result:
    """Send one request per entry of ``headers`` with ``concurrency`` workers on keep-alive connections;
    request ``i`` asks for a token for ``services[i % len(services)]``."""
    latencies: list[float] = []
    errors = 0
    queue = [({"service": services[i % len(services)], "scope": target.scope}, h) for i, h in enumerate(headers)][::-1]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warmup_params = {"service": services[0], "scope": target.scope}
        async with session.get(target.url, params=warmup_params) as warmup:  # open a connection, load caches
            await warmup.read()

        async def worker() -> None:
            nonlocal errors
            while queue:
                params, request_headers = queue.pop()
                start = time.perf_counter()
                async with session.get(target.url, params=params, headers=request_headers) as response:
                    await response.read()
                latencies.append(time.perf_counter() - start)
                errors += response.status != 200

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return Result(f"{target.name}: {label}", len(headers), seconds, latencies, errors)


def add_cold_users(htpasswd: Path, count: int, cost: int) -> list[tuple[str, str]]:
    users = [(f"cold{i}", f"cold-pw-{i}") for i in range(count)]
    with htpasswd.open("a") as file:
        for user, password in users:
            file.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()}\n")
    return users


async def scenarios(
    target: Target, args: argparse.Namespace, cold: list[tuple[str, str]], kinds: Sequence[str], requests: int
) -> list[Result]:
    """The runs of ``kinds`` (cold, cached, anonymous) at each client count; ``requests`` per cached and anonymous
    run, ``args.cold`` distinct users per cold run."""
    results = []
    for concurrency in args.concurrency:
        if "cold" in kinds:
            batch = cold[: args.cold] if concurrency == 1 else cold[args.cold : 2 * args.cold]
            label = f"cold bcrypt, c={concurrency}"
            results.append(await run(target, label, [{"Authorization": basic(*u)} for u in batch], concurrency))
        if "cached" in kinds:
            cached = [{"Authorization": basic("alice", "alice-pw")}] * requests
            results.append(await run(target, f"cached, c={concurrency}", cached, concurrency))
        if "anonymous" in kinds:
            results.append(await run(target, f"anonymous, c={concurrency}", [{}] * requests, concurrency))
    return results


CACHED = {"Authorization": basic("alice", "alice-pw")}


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid``'s threads so far, in nanoseconds from the scheduler (Linux
    /proc/PID/task/*/schedstat). Unlike wall time, load from elsewhere on the machine does not inflate it: on
    shared cores it is the steadier measure of a service's cost. /proc/PID/stat counts in clock ticks (10 ms): a
    short run of a cheap service could measure no CPU at all."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended since the listing
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def measured(
    target: Target, requests: Sequence[dict[str, str]], concurrency: int, audiences: list[str]
) -> Result:
    """:func:`run`, plus the CPU time the service spent meanwhile."""
    assert target.pid is not None
    before = cpu_seconds(target.pid)
    result = await run(target, f"c={concurrency}", requests, concurrency, audiences)
    return dataclasses.replace(result, cpu=cpu_seconds(target.pid) - before)


@dataclass(frozen=True)
class Pair:
    """Cached issuance at one client count from two services: a Registry's own and an index's, or ours and the
    floor."""

    concurrency: int
    first: Result
    second: Result


async def alternating(
    first: tuple[Target, list[str]], second: tuple[Target, list[str]], args: argparse.Namespace
) -> list[Pair]:
    """Cached issuance from two services (each with the audiences its requests cycle) with the same clients, in
    rounds that alternate which goes first, so that load from elsewhere on the machine (2 shared cores) hits both
    alike."""
    for target, audiences in (first, second):  # alice's one bcrypt check per service
        await run(target, "warm-up", [CACHED] * len(audiences), 1, audiences)
    pairs = []
    for concurrency in args.concurrency:
        requests = [CACHED] * args.requests
        rounds: list[tuple[Result, Result]] = []
        for round_ in range(args.rounds):
            order = [first, second][:: -1 if round_ % 2 else 1]  # ABBA: neither always first
            done: dict[str, Result] = {}
            for target, audiences in order:
                done[target.name] = await measured(target, requests, concurrency, audiences)
            rounds.append((done[first[0].name], done[second[0].name]))
        pooled = [sum(column[1:], column[0]) for column in zip(*rounds, strict=True)]
        pairs.append(Pair(concurrency, *pooled))
    return pairs


def side_by_side(pairs: Sequence[Pair], first: str, second: str) -> list[str]:
    """One line per client count: tokens/s, p50, p99 and service CPU per token of each service, and the second's
    rate and CPU per token relative to the first's."""
    head = f"{'clients':>7} | {f'{first}: tokens/s':>20} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>6} | "
    head += f"{f'{second}: tokens/s':>20} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>6} | "
    head += f"{'rate':>5} {'CPU':>5} {'errors':>6}"
    lines = [head]
    for pair in pairs:
        cells = []
        for result in (pair.first, pair.second):
            p50, p99 = result.quantiles_ms()
            cells.append(f"{result.rate:>20.0f} {p50:>7.2f} {p99:>7.2f} {result.cpu_per_token_us:>6.0f}")
        errors = pair.first.errors + pair.second.errors
        rate = pair.second.rate / pair.first.rate
        cpu = pair.second.cpu / pair.first.cpu if pair.first.cpu else float("nan")
        lines.append(f"{pair.concurrency:>7} | {cells[0]} | {cells[1]} | {rate:>5.2f} {cpu:>5.2f} {errors:>6}")
    return lines


def compare_floor(directory: Path, args: argparse.Namespace) -> list[Pair]:
    """Our service and the floor (bench/token/floor.py) on the same files, measured by :func:`alternating`."""
    directory.mkdir()
    config = write_service_files(directory, "ES256", bcrypt_cost=args.cost)
    ours_port, floor_port = free_port(), free_port()
    service = start_token_service(config, ours_port)
    try:
        floor = [sys.executable, str(Path(__file__).with_name("floor.py")), "--config", str(config)]
        process = serving([*floor, "--listen", f"127.0.0.1:{floor_port}"], floor_port, directory / "floor.log")
        try:
            ours = Target("ours", f"http://127.0.0.1:{ours_port}/token", service.pid)
            presigned = Target("floor", f"http://127.0.0.1:{floor_port}/token", process.pid)
            return asyncio.run(alternating((ours, [SERVICE]), (presigned, [SERVICE]), args))
        finally:
            stop(process)
    finally:
        stop(service)


def compare_index(directory: Path, args: argparse.Namespace) -> list[Pair]:
    """Start a token service for one Registry and one for ``args.joined`` (each its own files, rules built
    alike by :func:`per_registry_access`) and measure both."""
    services = joined_services(args.joined)
    processes = []
    targets = []
    try:
        for name, audiences in (("one", services[:1]), ("index", services)):
            (directory / name).mkdir()
            service: str | list[str] = audiences[0] if name == "one" else audiences  # a Registry's own: one
            config = write_service_files(
                directory / name, "ES256", args.cost, service=service, access=per_registry_access(audiences)
            )
            port = free_port()
            processes.append(start_token_service(config, port))
            targets.append(Target(name, f"http://127.0.0.1:{port}/token", processes[-1].pid))
        one, index = targets
        return asyncio.run(alternating((one, services[:1]), (index, services), args))
    finally:
        for process in processes:
            stop(process)


def peer_binary() -> Path | None:
    bin_dir = Path(os.environ.get("REGISTRY_OPERATOR_BIN_DIR") or REPO_ROOT / ".cache/bin")
    found = sorted(bin_dir.glob("distribution-token-server-*/token-server"))
    return found[-1] if found else None


def serving(command: Sequence[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``command`` started with its output to ``log``, once it listens on ``port``."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_for_port(port)
    except BaseException:
        stop(process)
        raise
    return process


def issuance(directory: Path, args: argparse.Namespace) -> list[Result]:
    """Our service (cold, cached, anonymous) and the peer when built (cold, cached: it has no anonymous access);
    one after the other, the same clients and credentials."""
    config = write_service_files(directory, "ES256", bcrypt_cost=args.cost)
    cold = add_cold_users(directory / "htpasswd", 2 * args.cold, args.cost)
    results: list[Result] = []
    port = free_port()
    service = start_token_service(config, port)
    try:
        target = Target("ours", f"http://127.0.0.1:{port}/token")
        results += asyncio.run(scenarios(target, args, cold, ("cold", "cached", "anonymous"), args.requests))
    finally:
        stop(service)
    binary = peer_binary()
    if binary is None:
        print("peer: no .cache/bin/distribution-token-server-*/token-server (hack/build token_server); skipped")
        return results
    port = free_port()
    peer = [str(binary), "-addr", f"127.0.0.1:{port}", "-passwd", str(directory / "htpasswd"), "-realm", ISSUER,
            "-issuer", ISSUER]  # fmt: skip
    process = serving(peer, port, directory / "peer.log")
    try:
        # It grants a user the repositories under their own name only.
        name = f"peer ({binary.parent.name.removeprefix('distribution-')})"
        target = Target(name, f"http://127.0.0.1:{port}/token/", scope=PEER_SCOPE)
        results += asyncio.run(scenarios(target, args, cold, ("cold", "cached"), args.peer_requests))
    finally:
        stop(process)
    return results


def _numbers(result: Result) -> dict[str, float]:
    p50, p99 = result.quantiles_ms()
    return {"count": result.count, "rate": result.rate, "p50_ms": p50, "p99_ms": p99, "errors": result.errors,
            "cpu_per_token_us": result.cpu_per_token_us}  # fmt: skip


def as_json(
    args: argparse.Namespace,
    load: Sequence[float],
    results: Sequence[Result],
    floor: Sequence[Pair],
    index: Sequence[Pair],
) -> dict[str, object]:
    """The run's numbers for bench/report.py (the README table), with where and when they were measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)

    def pairs(of: Sequence[Pair], first: str, second: str) -> list[dict[str, object]]:
        return [{"concurrency": p.concurrency, first: _numbers(p.first), second: _numbers(p.second)} for p in of]

    return {
        "env": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": list(load),
                "operator_commit": commit.stdout.strip() or "?", "cpus": os.cpu_count()},
        "mode": "token",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": {r.label: _numbers(r) for r in results},
        "floor": pairs(floor, "ours", "floor"),
        "index": pairs(index, "one", "index"),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cached/anonymous run")
    parser.add_argument("--cold", type=int, default=40, help="requests per cold run (distinct users)")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the htpasswd entries")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--joined", type=int, default=10, help="registries joined to the index (0: no comparison)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per cell of the comparison")
    parser.add_argument("--peer-requests", type=int, default=100, help="per cached run of the peer (bcrypt each)")
    parser.add_argument("--json", type=Path, help="also write the numbers here (bench/results/token.json: the README)")
    parser.add_argument(
        "--quick", action="store_true", help="seconds: the index comparison alone, at most 300 requests x 2 rounds"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = min(args.requests, 300), min(args.rounds, 2)
    pairs: list[Pair] = []
    floor: list[Pair] = []
    results: list[Result] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        directory = Path(tmp)
        if not args.quick:
            results = issuance(directory, args)
            floor = compare_floor(directory / "floor", args)
        if args.joined:
            pairs = compare_index(directory, args)
    load = tuple(max(a, b) for a, b in zip(load, os.getloadavg(), strict=True))
    if results:
        print(f"\nbcrypt cost {args.cost}, ES256, loopback, {len(results)} runs; latency per request in ms")
        print(f"{'run':<42} {'count':>6} {'tokens/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}")
        for result in results:
            print(result.row())
    if floor:
        print(
            f"\nOurs against the floor (the same server answering a token signed at start): cached credentials, "
            f"{args.rounds} x {args.requests} requests per cell (rounds alternate)"
        )
        print("\n".join(side_by_side(floor, "ours", "floor")))
    print(f"\nload average (highest of start and end): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(args, load, results, floor, pairs), indent=2) + "\n")
    if pairs:
        print(
            f"\nOne registry against {args.joined} joined to an index: cached credentials, a rule per registry, "
            f"{args.rounds} x {args.requests} requests per cell (rounds alternate), the index's spread over its "
            f"{args.joined} audiences"
        )
        print("\n".join(side_by_side(pairs, "1 registry", f"{args.joined} joined")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
