"""Token issuance throughput and latency on loopback: cold (a bcrypt check per request: every
request is a different user's first login), cached (same credentials again) and anonymous; each
sequentially and with concurrent clients. Prints numbers, asserts nothing.

Compares with cesanta/docker_auth when a built ``.cache/bin/docker_auth-*/auth_server`` exists.

Usage: python bench/token/bench_token.py [--requests 2000] [--cold 40] [--cost 10] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from common import ISSUER, REPO_ROOT, SERVICE, free_port, start_token_service, stop, wait_for_port, write_service_files

SCOPE = "repository:team-a/app:pull,push"


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # token endpoint


@dataclass(frozen=True)
class Result:
    label: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int

    def row(self) -> str:
        q = statistics.quantiles(self.latencies, n=100) if len(self.latencies) > 1 else self.latencies * 99
        return (
            f"{self.label:<42} {self.count:>6} {self.count / self.seconds:>10.0f} "
            f"{q[49] * 1000:>9.2f} {q[98] * 1000:>9.2f} {self.errors:>6}"
        )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def run(target: Target, label: str, headers: Sequence[dict[str, str]], concurrency: int) -> Result:
    """Send one request per entry of ``headers`` with ``concurrency`` workers on keep-alive connections."""
    params = {"service": SERVICE, "scope": SCOPE}
    latencies: list[float] = []
    errors = 0
    queue = list(reversed(headers))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(target.url, params=params) as warmup:  # open a connection, load caches
            await warmup.read()

        async def worker() -> None:
            nonlocal errors
            while queue:
                request_headers = queue.pop()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cached/anonymous run")
    parser.add_argument("--cold", type=int, default=40, help="requests per cold run (distinct users)")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the htpasswd entries")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="token-bench-") as tmp:
        directory = Path(tmp)
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
        else:
            port = free_port()
            log = (directory / "docker_auth.log").open("wb")
            process = subprocess.Popen(
                [str(binary), str(docker_auth_config(directory, port, cold))], stdout=log, stderr=log
            )
            try:
                wait_for_port(port)
                target = Target(f"docker_auth ({binary.parent.name})", f"http://127.0.0.1:{port}/auth")
                results += asyncio.run(scenarios(target, args, cold))
            finally:
                stop(process)
                log.close()
    print(f"\nbcrypt cost {args.cost}, ES256, loopback, {len(results)} runs; latency per request in ms")
    print(f"{'run':<42} {'count':>6} {'tokens/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}")
    for result in results:
        print(result.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
