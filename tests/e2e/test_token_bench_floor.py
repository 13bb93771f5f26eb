"""The token benchmark against its floor and its peer (issue 12, item 6), run for real at a tiny size: our
service and the floor (the same aiohttp server answering a token signed at start) side by side, and
distribution 2.8's reference token server when `hack/build bench` built it. The floor's token must be a real one
of the same shape, or the comparison would flatter it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.token.common import free_port, http, write_service_files

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "token" / "bench_token.py"
FLOOR = REPO / "bench" / "token" / "floor.py"
TINY = ["--requests", "30", "--cold", "2", "--concurrency", "1", "2", "--rounds", "2", "--cost", "4", "--joined", "0"]


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_the_floor_answers_a_real_token_of_the_same_shape(tmp_path: Path) -> None:
    from bench.token.common import stop, wait_for_port

    config = write_service_files(tmp_path, bcrypt_cost=4)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(FLOOR), "--config", str(config), "--listen", f"127.0.0.1:{port}"])
    try:
        wait_for_port(port)
        status, headers, body = http("GET", f"http://127.0.0.1:{port}/token?service=x&scope=y")
    finally:
        stop(process)
    assert status == 200 and headers["Cache-Control"] == "no-store", body
    answer = json.loads(body)
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    claims = _claims(answer["token"])
    assert claims["sub"] == "alice" and claims["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}
    ]


def test_issuance_is_measured_against_the_floor_and_written_as_json(tmp_path: Path) -> None:
    out = tmp_path / "token.json"
    done = subprocess.run([sys.executable, str(BENCH), *TINY, "--json", str(out)], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Ours against the floor" in done.stdout and "load average" in done.stdout, done.stdout
    res = json.loads(out.read_text())
    assert [p["concurrency"] for p in res["floor"]] == [1, 2]
    for pair in res["floor"]:
        for side in ("ours", "floor"):
            assert pair[side]["rate"] > 0 and pair[side]["errors"] == 0 and pair[side]["cpu_per_token_us"] > 0, pair
    assert res["runs"]["ours: cached, c=1"]["errors"] == 0
    assert len(res["env"]["load"]) == 3 and res["mode"] == "token"


def test_the_peer_issues_tokens_when_built(tmp_path: Path) -> None:
    bin_dir = Path(os.environ.get("REGISTRY_OPERATOR_BIN_DIR") or REPO / ".cache" / "bin")
    if not list(bin_dir.glob("distribution-token-server-*/token-server")):
        pytest.skip("the peer is optional: hack/build bench")
    out = tmp_path / "token.json"
    command = [sys.executable, str(BENCH), *TINY, "--peer-requests", "4", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    peer = {label: run for label, run in json.loads(out.read_text())["runs"].items() if label.startswith("peer")}
    assert sorted(label.split(": ")[1] for label in peer) == sorted(
        ["cold bcrypt, c=1", "cached, c=1", "cold bcrypt, c=2", "cached, c=2"]
    ), peer
    assert all(run["errors"] == 0 for run in peer.values()), peer
