"""`python -m bench --scale` (issue 12, item 5) at a tiny size: the growth curve runs on its own control plane,
records each count's cost and RSS, and writes scale.json, scale.md and scale.png."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_scale_records_each_count_and_draws_the_curve(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--scale", "3,1", "--nodes", "1", "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY_BENCH_OPERATOR_DIR"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    res = json.loads((tmp_path / "scale.json").read_text())
    levels = res["scale"]["levels"]
    assert [lv["registries"] for lv in levels] == [0, 1, 3]  # ascending, whatever the order given
    for level in levels[1:]:
        assert level["ready"] > 0 and level["reconciles"] >= level["added"], level
        assert level["operator_cpu"] > 0 and level["read_total"] > 0 and level["write_total"] > 0, level
        assert level["rss"] > 0 and len(level["load"]) == 3, level
    assert [lv["added"] for lv in levels[1:]] == [1, 2]
    md = (tmp_path / "scale.md").read_text()
    assert "Scale 1 / 3: operator RSS at rest" in md and "API reads, writes per reconcile" in md, md
    assert "Scale 1 / 3" in done.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
