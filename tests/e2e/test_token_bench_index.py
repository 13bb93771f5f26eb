"""The token benchmark's comparison of one registry against ten joined to an index (issue 14's proof), run for
real at a tiny size: two token-service processes on loopback, the index's requests spread over its audiences.

No cluster: the services are started from files as the bench starts them (bench/token/common.py), so these
tests guard the comparison itself: that it runs, prints both services side by side without errors, and that
the index it measures really has a rule per registry deciding by the token's audience.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.token.common import (
    free_port,
    http,
    joined_services,
    per_registry_access,
    start_token_service,
    stop,
    write_service_files,
)

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "token" / "bench_token.py"
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}


def test_quick_comparison_prints_one_registry_and_the_index_side_by_side() -> None:
    command = [sys.executable, str(BENCH), "--quick", "--requests", "40", "--concurrency", "1", "4", "--cost", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert "One registry against 10 joined to an index" in done.stdout, done.stdout
    assert "bcrypt cost" not in done.stdout  # --quick: the comparison alone
    # clients | tokens/s p50 p99 CPU (one registry) | the same (index) | rate and CPU ratios, errors
    rows = [[cell.split() for cell in line.split("|")] for line in done.stdout.splitlines() if "|" in line]
    table = {int(clients[0]): (one, index, totals) for clients, one, index, totals in rows[1:]}
    assert sorted(table) == [1, 4], done.stdout
    for one, index, (_, _, errors) in table.values():
        assert float(one[0]) > 0 and float(index[0]) > 0, done.stdout
        assert errors == "0", done.stdout  # an audience the index did not know would be a 400


def test_the_measured_index_decides_by_audience(tmp_path: Path) -> None:
    """alice's own rule for reg3 pushes to ``reg3/*`` only in tokens for reg3, not in tokens for reg4."""
    services = joined_services(10)
    config = write_service_files(tmp_path, bcrypt_cost=4, service=services, access=per_registry_access(services))
    port = free_port()
    process = start_token_service(config, port)
    try:
        granted = {}
        for audience in services[3:5]:
            url = f"http://127.0.0.1:{port}/token?service={audience}&scope=repository:reg3/app:pull,push"
            status, _, body = http("GET", url, ALICE)
            assert status == 200, body
            payload = json.loads(body)["token"].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            assert claims["aud"] == audience
            granted[audience] = claims["access"]
    finally:
        stop(process)
    assert granted[services[3]] == [{"type": "repository", "name": "reg3/app", "actions": ["pull", "push"]}]
    assert granted[services[4]] == []
