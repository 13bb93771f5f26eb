"""Token issuance throughput and latency on loopback: cold (a bcrypt check per request: every
request is a different user's first login), cached (same credentials again) and anonymous; each
sequentially and with concurrent clients. Then one registry against an index: cached issuance from a
token service for one Registry and from one for ``--joined`` Registries (a rule per registry, requests
spread over their audiences), same clients, runs interleaved, printed side by side with each service's
CPU time per token (steadier than rates on shared cores). Prints numbers, asserts nothing.

Compares with cesanta/docker_auth when a built ``.cache/bin/docker_auth-*/auth_server`` exists.

Usage: python bench/token/bench_token.py [--requests 2000] [--cold 40] [--cost 10] [--concurrency 1 8]
                                         [--joined 10] [--rounds 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
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


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # token endpoint
    pid: int | None = None  # the serving process, when its CPU time is to be read


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
    queue = [({"service": services[i % len(services)], "scope": SCOPE}, h) for i, h in enumerate(headers)][::-1]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warmup_params = {"service": services[0], "scope": SCOPE}
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


async def scenarios(target: Target, args: argparse.Namespace, cold: list[tuple[str, str]]) -> list[Result]:
    results = []
    for concurrency in args.concurrency:
        batch = cold[: args.cold] if concurrency == 1 else cold[args.cold : 2 * args.cold]
        results.append(
            await run(
                target, f"cold bcrypt, c={concurrency}", [{"Authorization": basic(*u)} for u in batch], concurrency
            )
        )
        cached = [{"Authorization": basic("alice", "alice-pw")}] * args.requests
        results.append(await run(target, f"cached, c={concurrency}", cached, concurrency))
        results.append(await run(target, f"anonymous, c={concurrency}", [{}] * args.requests, concurrency))
    return results


CACHED = {"Authorization": basic("alice", "alice-pw")}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux /proc). Unlike wall time, load from elsewhere
    on the machine does not inflate it: on shared cores it is the steadier measure of a service's cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    """Cached issuance at one client count: a Registry's own token service and an index's."""

    concurrency: int
    one: Result
    index: Result


async def one_against_index(one: Target, index: Target, services: list[str], args: argparse.Namespace) -> list[Pair]:
    """Cached issuance from both services with the same clients, in rounds that alternate which goes first, so
    that load from elsewhere on the machine (2 shared cores) hits both alike; the index's requests cycle its
    audiences."""
    for target, audiences in ((one, services[:1]), (index, services)):  # alice's one bcrypt check per service
        await run(target, "warm-up", [CACHED] * len(audiences), 1, audiences)
    pairs = []
    for concurrency in args.concurrency:
        requests = [CACHED] * args.requests
        rounds: list[tuple[Result, Result]] = []
        for round_ in range(args.rounds):
            order = [(one, services[:1]), (index, services)][:: -1 if round_ % 2 else 1]  # ABBA: neither always first
            done: dict[str, Result] = {}
            for target, audiences in order:
                done[target.name] = await measured(target, requests, concurrency, audiences)
            rounds.append((done[one.name], done[index.name]))
        pooled = [sum(column[1:], column[0]) for column in zip(*rounds, strict=True)]
        pairs.append(Pair(concurrency, *pooled))
    return pairs


def side_by_side(pairs: Sequence[Pair], joined: int) -> list[str]:
    """One line per client count: tokens/s, p50, p99 and service CPU per token of each service, and the index's
    rate and CPU per token relative to the one registry's."""
    head = f"{'clients':>7} | {'1 registry: tokens/s':>20} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>6} | "
    head += f"{f'{joined} joined: tokens/s':>20} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>6} | "
    head += f"{'rate':>5} {'CPU':>5} {'errors':>6}"
    lines = [head]
    for pair in pairs:
        cells = []
        for result in (pair.one, pair.index):
            p50, p99 = result.quantiles_ms()
            cells.append(f"{result.rate:>20.0f} {p50:>7.2f} {p99:>7.2f} {result.cpu_per_token_us:>6.0f}")
        errors = pair.one.errors + pair.index.errors
        rate = pair.index.rate / pair.one.rate
        cpu = pair.index.cpu / pair.one.cpu if pair.one.cpu else float("nan")
        lines.append(f"{pair.concurrency:>7} | {cells[0]} | {cells[1]} | {rate:>5.2f} {cpu:>5.2f} {errors:>6}")
    return lines


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
        return asyncio.run(one_against_index(*targets, services, args))
    finally:
        for process in processes:
            stop(process)


def docker_auth_binary() -> Path | None:
    found = sorted((REPO_ROOT / ".cache/bin").glob("docker_auth-*/auth_server"))
    return found[-1] if found else None


def docker_auth_config(directory: Path, port: int, users: list[tuple[str, str]]) -> Path:
    lines = [
        f'server:\n  addr: "127.0.0.1:{port}"',
        f'token:\n  issuer: "{ISSUER}"\n  expiration: 300\n'
        f'  certificate: "{directory / "signing.crt"}"\n  key: "{directory / "signing.key"}"',
        "users:",
    ]
    for line in (directory / "htpasswd").read_text().splitlines():
        user, _, hashed = line.partition(":")
        lines.append(f'  "{user}":\n    password: "{hashed}"')
    lines.append(
        '  "": {}\nacl:\n  - match: {account: "alice"}\n    actions: ["*"]\n'
        '  - match: {account: "/^cold/"}\n    actions: ["pull"]\n'
        '  - match: {account: ""}\n    actions: ["pull"]'
    )
    path = directory / "docker_auth.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def issuance(directory: Path, args: argparse.Namespace) -> list[Result]:
    """Cold, cached and anonymous runs against our service, then docker_auth's when built."""
    results: list[Result] = []
    config = write_service_files(directory, "ES256", bcrypt_cost=args.cost)
    cold = add_cold_users(directory / "htpasswd", 2 * args.cold, args.cost)
    port = free_port()
    service = start_token_service(config, port)
    try:
        results += asyncio.run(scenarios(Target("ours", f"http://127.0.0.1:{port}/token"), args, cold))
    finally:
        stop(service)
    binary = docker_auth_binary()
    if binary is None:
        print("docker_auth: no .cache/bin/docker_auth-*/auth_server built; comparison skipped")
        return results
    port = free_port()
    log = (directory / "docker_auth.log").open("wb")
    process = subprocess.Popen([str(binary), str(docker_auth_config(directory, port, cold))], stdout=log, stderr=log)
    try:
        wait_for_port(port)
        target = Target(f"docker_auth ({binary.parent.name})", f"http://127.0.0.1:{port}/auth")
        results += asyncio.run(scenarios(target, args, cold))
    finally:
        stop(process)
        log.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cached/anonymous run")
    parser.add_argument("--cold", type=int, default=40, help="requests per cold run (distinct users)")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the htpasswd entries")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--joined", type=int, default=10, help="registries joined to the index (0: no comparison)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per cell of the comparison")
    parser.add_argument(
        "--quick", action="store_true", help="seconds: the index comparison alone, at most 300 requests x 2 rounds"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = min(args.requests, 300), min(args.rounds, 2)
    pairs: list[Pair] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        directory = Path(tmp)
        if not args.quick:
            results = issuance(directory, args)
        if args.joined:
            pairs = compare_index(directory, args)
    if results:
        print(f"\nbcrypt cost {args.cost}, ES256, loopback, {len(results)} runs; latency per request in ms")
        print(f"{'run':<42} {'count':>6} {'tokens/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}")
        for result in results:
            print(result.row())
    if pairs:
        print(
            f"\nOne registry against {args.joined} joined to an index: cached credentials, a rule per registry, "
            f"{args.rounds} x {args.requests} requests per cell (rounds alternate), the index's spread over its "
            f"{args.joined} audiences"
        )
        print("\n".join(side_by_side(pairs, args.joined)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
