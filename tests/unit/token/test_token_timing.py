"""Response time does not tell which users exist (issue 15: unknown users took 1.5 ms, known 64 ms).

Through the HTTP app in-process, with a file where the first user has a cheap hash (generated
passwords: cost 4) and another a costly one (chosen passwords; 7 here to keep the test short, 10
in production): an unknown user, a wrong password for the costly user and a wrong password for
the cheap user must take the same time. The three kinds of request are interleaved so that load
from other processes on the machine affects them alike. Run with ``-s`` to see the distributions;
:func:`measure` with ``costly=10`` gives the production numbers.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from typing import Any

import bcrypt
from aiohttp.test_utils import TestClient, TestServer

from registry_operator.token.app import create_app
from registry_operator.token.authn import Authenticator
from registry_operator.token.runtime import Runtime
from registry_operator.token.server import HANDLER_OPTIONS
from registry_operator.token.throttle import FailureThrottle

KINDS = {
    "unknown user": ("mallory", "guess"),
    "known, costly hash": ("chosen", "guess"),
    "known, cheap hash": ("generated", "guess"),
}


def htpasswd(cheap: int, costly: int) -> str:
    def line(user: str, cost: int) -> str:
        return f"{user}:{bcrypt.hashpw(b'secret', bcrypt.gensalt(cost)).decode()}\n"

    return line("generated", cheap) + line("chosen", costly)  # the cheap hash first, as the old decoy took it


async def measure(mounted: Any, cheap: int = 4, costly: int = 7, rounds: int = 50) -> dict[str, list[float]]:
    """Seconds per failed login of each kind, ``rounds`` each, interleaved."""
    mounted.auth.write({"htpasswd": htpasswd(cheap, costly)})
    runtime = Runtime(mounted.config_path)
    # no throttle delays: the point is the time the check itself takes
    throttle = FailureThrottle(free_failures=10**9, address_burst=10**9)
    authenticator = Authenticator(runtime.htpasswd, throttle)
    server = TestServer(create_app(runtime, authenticator), host="127.0.0.1", port=0)
    await server.start_server(**HANDLER_OPTIONS)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        async with TestClient(server) as client:
            for _ in range(rounds):
                for kind, (user, password) in KINDS.items():
                    header = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
                    started = time.perf_counter()
                    response = await client.get("/token", headers=header)
                    await response.read()
                    times[kind].append(time.perf_counter() - started)
                    assert response.status == 401
    finally:
        authenticator.close()
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(times: dict[str, list[float]]) -> str:
    return "\n".join(
        f"  {kind:20} p50 {percentile(v, 0.5) * 1000:6.1f} ms  p90 {percentile(v, 0.9) * 1000:6.1f} ms"
        f"  mean {statistics.fmean(v) * 1000:6.1f} ms  (n={len(v)})"
        for kind, v in times.items()
    )


def test_unknown_and_known_users_take_the_same_time(mounted: Any) -> None:
    times = asyncio.run(measure(mounted))
    print(f"\nfailed logins, bcrypt costs 4 and 7:\n{report(times)}")
    reference = percentile(times["known, costly hash"], 0.5)
    for kind in ("unknown user", "known, cheap hash"):
        ratio = percentile(times[kind], 0.5) / reference
        assert 0.67 < ratio < 1.5, f"{kind}: median {ratio:.2f}x that of a known user"
