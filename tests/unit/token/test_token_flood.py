"""The service process under a login flood: 10,000 bogus logins with random 1 MB user names.

Issue 15: 200 such requests took the service from 50 to 198 MB against its 256 Mi limit. Here the
real ``python -m registry_operator.token`` runs as a subprocess (so its own peak RSS, ``VmHWM``,
and its CPU time are measured) while an attacker on 127.0.0.1 first sends 1,000 logins with random
names of the longest allowed length, which do reach bcrypt and the throttle, then 10,000 with 1 MB
names three ways (a Basic header, a form with a Content-Length, a chunked form), which the service
refuses after reading a small part of each. Real users keep getting tokens throughout: from
another address (127.0.0.2, a new connection each time), and from the attacker's own address
with credentials that logged in before the flood. Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import registry_operator
from registry_operator.token.limits import MAX_USER_BYTES

ATTEMPTS = 10_000
NAME_BYTES = 1024 * 1024
LONGEST_NAMES = 1_000  # names of exactly MAX_USER_BYTES: past the size limits, into the throttle
CONCURRENCY = 16
RSS_LIMIT_MIB = 128  # the goal in issue 15 (the pod's limit is 256 Mi)
ATTACKER, USER_ADDRESS = "127.0.0.1", "127.0.0.2"


def start_service(config_path: str, log_path: Path) -> subprocess.Popen[bytes]:
    package_root = str(Path(registry_operator.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "registry_operator.token", "--config", config_path, "--listen", "127.0.0.1:0"]
    with log_path.open("wb") as log:  # a file, not a pipe: 10,000 warnings must not block the service
        return subprocess.Popen(command, stderr=log, env=env)


def wait_for_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if match := re.search(r"listening on http://[^ ]*:(\d+)", log_path.read_text(errors="replace")):
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"the service did not start: {log_path.read_text(errors='replace')}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident memory of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


Chunk = bytes | memoryview


class Names:
    """Random URL-safe user names without generating gigabytes of randomness or copying them.

    A name is 12 fresh random characters, then a slice at a random offset of a 4 MiB random pool,
    handed out as zero-copy views. The pool's base64 is precomputed so Basic credentials for a name
    are views too (base64 of a concatenation is the concatenation of base64s at multiples of 3 bytes).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pool = base64.urlsafe_b64encode(os.urandom(3 * NAME_BYTES))
        self._pool_b64 = base64.b64encode(self._pool)

    def __call__(self, length: int) -> tuple[bytes, int, int]:
        """A name of ``length`` bytes as (prefix, pool offset, pool length); see :meth:`plain`."""
        rest = length - 12
        offset = 3 * self._rng.randrange((len(self._pool) - rest) // 3)
        return base64.urlsafe_b64encode(os.urandom(9)), offset, rest

    def plain(self, name: tuple[bytes, int, int]) -> list[Chunk]:
        prefix, offset, rest = name
        return [prefix, memoryview(self._pool)[offset : offset + rest]]

    def basic(self, name: tuple[bytes, int, int], password: bytes) -> list[Chunk]:
        """``base64(name + b":" + password)`` in pieces."""
        prefix, offset, rest = name
        aligned = rest - rest % 3
        middle = memoryview(self._pool_b64)[offset // 3 * 4 : (offset + aligned) // 3 * 4]
        tail = self._pool[offset + aligned : offset + rest] + b":" + password
        return [base64.b64encode(prefix), middle, base64.b64encode(tail)]


def bogus_request(shape: str, names: Names, length: int) -> list[Chunk]:
    """Raw HTTP/1.1 for a login as a random name of ``length`` bytes with a wrong password."""
    name = names(length)
    if shape == "basic":
        head = b"GET /token?service=ns/registry HTTP/1.1\r\nHost: t\r\nAuthorization: Basic "
        return [head, *names.basic(name, b"wrong"), b"\r\n\r\n"]
    head = b"POST /token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    fields = b"grant_type=password&password=wrong&username="
    size = len(fields) + length
    if shape == "form":
        return [head, b"Content-Length: %d\r\n\r\n" % size, fields, *names.plain(name)]
    # chunked: no Content-Length, so the service learns the size only while reading (one big chunk)
    return [head, b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % size, fields, *names.plain(name), b"\r\n0\r\n\r\n"]


async def send_raw(port: int, parts: list[Chunk]) -> str:
    """Send everything and read the status meanwhile; a connection reset first shows as ``reset``.

    The service reads at most its small receive window before it answers and closes, so a large
    send buffer here would only make the kernel copy (and this test pay for) bytes nobody reads.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (ATTACKER, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError:
        sock.close()
        return "connect failed"
    try:
        for part in parts:
            writer.write(part)  # sent in the background as the service's window allows
        status = await asyncio.wait_for(reader.readline(), 30)
        return status.split(b" ")[1].decode() if status.startswith(b"HTTP/1.1 ") else "reset"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "reset"
    finally:
        writer.close()


@dataclass
class RealUsers:
    """Legitimate logins while the flood runs; every one must get a token."""

    port: int
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    async def login(self, session: aiohttp.ClientSession, source: str, user: str, password: str, form: bool) -> None:
        url = f"http://127.0.0.1:{self.port}/token"
        started = time.perf_counter()
        if form:
            data = {"grant_type": "password", "username": user, "password": password, "service": "ns/registry"}
            response = await session.post(url, data=data)
        else:
            credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers = {"Authorization": f"Basic {credentials}"}
            response = await session.get(url, params={"service": "ns/registry"}, headers=headers)
        body: dict[str, Any] = await response.json()
        self.latencies.append(time.perf_counter() - started)
        ok = response.status == 200 and str(body.get("access_token", "")).count(".") == 2
        self.outcomes[f"{user}@{source}:{'ok' if ok else response.status}"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(USER_ADDRESS, 0), force_close=True))
        shared = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ATTACKER, 0)))
        async with fresh, shared:
            await self.login(shared, ATTACKER, "alice", "alice-pw", form=False)  # cached before the flood
            for user in itertools.cycle(("bob", "carol")):
                if stop.is_set():
                    return
                await self.login(fresh, USER_ADDRESS, user, f"{user}-pw", form=True)
                await self.login(shared, ATTACKER, "alice", "alice-pw", form=False)
                await asyncio.sleep(0.05)


async def flood(port: int, pid: int, samples: list[float]) -> tuple[Counter[str], Counter[str], RealUsers, float]:
    rng = random.Random(15)
    names = Names(rng)
    big: Counter[str] = Counter()
    longest: Counter[str] = Counter()
    shapes = ("basic", "form", "chunked")

    async def attacker(jobs: list[tuple[Counter[str], str, int]]) -> None:
        while jobs:
            tally, shape, length = jobs.pop()
            tally[await send_raw(port, bogus_request(shape, names, length))] += 1

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            samples.append(memory_mib(pid)["VmRSS"])
            await asyncio.sleep(0.2)

    users = RealUsers(port)
    stop = asyncio.Event()
    background = [asyncio.ensure_future(users.run(stop)), asyncio.ensure_future(sample(stop))]
    started = time.perf_counter()
    jobs = [(big, shapes[i % 3], NAME_BYTES) for i in range(ATTEMPTS)]
    jobs += [(longest, shapes[i % 2], MAX_USER_BYTES) for i in range(LONGEST_NAMES)]  # popped first
    await asyncio.gather(*(attacker(jobs) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*background)
    return big, longest, users, elapsed


def test_a_flood_of_bogus_logins_keeps_memory_bounded_and_real_users_served(
    mounted: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="asyncio")  # "socket.send() raised exception" once per reset
    log_path = tmp_path / "service.log"
    process = start_service(mounted.config_path, log_path)
    try:
        port = wait_for_port(process, log_path)
        before = memory_mib(process.pid)
        samples: list[float] = []
        big, longest, users, elapsed = asyncio.run(flood(port, process.pid, samples))
        after = memory_mib(process.pid)
        cpu = cpu_seconds(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    print(
        f"\n{ATTEMPTS} bogus logins with 1 MiB names + {LONGEST_NAMES} with {MAX_USER_BYTES}-byte names"
        f" in {elapsed:.1f} s ({CONCURRENCY} connections)\n"
        f"  the service used {cpu:.1f} s of CPU ({cpu / (ATTEMPTS + LONGEST_NAMES) * 1000:.2f} ms a request)\n"
        f"  1 MiB names: {dict(big)}\n  {MAX_USER_BYTES}-byte names: {dict(longest)}\n"
        f"  service RSS: {before['VmRSS']:.1f} MiB at start, highest sample {max(samples):.1f} MiB,"
        f" peak (VmHWM) {after['VmHWM']:.1f} MiB, {after['VmRSS']:.1f} MiB at the end\n"
        f"  real users: {dict(users.outcomes)}; latency p50 {statistics.median(users.latencies) * 1000:.1f} ms,"
        f" max {max(users.latencies) * 1000:.1f} ms\n  service log: {len(log.splitlines())} lines, {len(log)} bytes"
    )
    assert max(after["VmHWM"], *samples) < RSS_LIMIT_MIB
    assert sum(big.values()) == ATTEMPTS and set(big) <= {"400", "413", "reset"}
    assert sum(longest.values()) == LONGEST_NAMES and set(longest) <= {"400", "401", "429"}
    assert longest["429"] > 0  # the attacker's address ran out of budget ...
    assert all(outcome.endswith(":ok") for outcome in users.outcomes)  # ... and nobody else noticed
    assert {outcome.partition("@")[0] for outcome in users.outcomes} == {"alice", "bob", "carol"}
    assert "wrong" not in log and not re.search(r"[A-Za-z0-9_-]{40}", log)  # no names, no passwords
