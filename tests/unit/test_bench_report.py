"""bench/report.py (issue 12): the growth curve's rows judge flatness, the token rows judge the issuance goal
against the floor, and the README table is rendered from the runs' JSON, each row naming its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report

MIB = 2**20


def _level(n: int, added: int, cpu: float, reads: int = 120, writes: int = 50, rss: int = 80) -> dict[str, object]:
    return {"registries": n, "added": added, "ready": added * 0.5, "reconciles": 10 * added, "operator_cpu": cpu,
            "read_total": reads * added, "write_total": writes * added, "rss": rss * MIB, "hwm": rss * MIB,
            "load": [3.0, 2.0, 1.0]}  # fmt: skip


def _scale(top_cpu: float, top_rss: int = 99) -> dict[str, object]:
    empty = {"registries": 0, "rss": 70 * MIB, "hwm": 70 * MIB, "load": [1.0, 1.0, 1.0]}
    levels = [empty, _level(10, 10, 1.0), _level(100, 90, 9.0), _level(1000, 900, top_cpu, rss=top_rss)]
    return {"mode": "scale", "env": {"date": "2026-12-01 23:50 UTC", "operator_commit": "abc1234", "load": [5, 4, 3]},
            "scale": {"levels": levels}}  # fmt: skip


def _row(rows: list[report.Row], start: str) -> report.Row:
    return next(r for r in rows if r[0].startswith(start))


def test_flat_cost_per_reconcile_is_met_and_a_rising_one_is_not() -> None:
    flat = report.rows(_scale(top_cpu=90.0))  # 10 ms per reconcile at every count
    assert _row(flat, "Scale: operator CPU per reconcile")[1:] == (
        "10.0 ms / 10.0 ms / 10.0 ms",
        "–",
        "1.00×",
        "≤ 1.5× at 1000 vs 10",
        "✔",
    )
    rising = report.rows(_scale(top_cpu=180.0))  # 20 ms per reconcile at 1000: work that grows with the count
    assert _row(rising, "Scale: operator CPU per reconcile")[3:] == ("2.00×", "≤ 1.5× at 1000 vs 10", "✘")
    assert _row(flat, "Scale: API reads, writes per reconcile")[1] == "12.0, 5.0 / 12.0, 5.0 / 12.0, 5.0"


def test_rss_is_judged_at_1000() -> None:
    assert _row(report.rows(_scale(90.0, top_rss=99)), "Scale 10 / 100 / 1000: operator RSS")[-1] == "✔"
    assert _row(report.rows(_scale(90.0, top_rss=101)), "Scale 10 / 100 / 1000: operator RSS")[-1] == "✘"


def _token(rate: float, p99: float) -> dict[str, object]:
    numbers = {"count": 100, "p50_ms": 0.5, "errors": 0, "cpu_per_token_us": 300.0}
    floor = [{"concurrency": 1, "ours": {**numbers, "rate": rate, "p99_ms": p99},
              "floor": {**numbers, "rate": 5000.0, "p99_ms": 1.0}}]  # fmt: skip
    runs = {"ours: cached, c=1": {**numbers, "rate": rate, "p99_ms": p99},
            "peer (token-server-2.8.3): cached, c=1": {**numbers, "rate": 20.0, "p99_ms": 60.0}}  # fmt: skip
    return {"mode": "token", "env": {"date": "2026-12-01 23:55 UTC", "operator_commit": "abc1234"},
            "args": {"cost": 10}, "runs": runs, "floor": floor, "index": []}  # fmt: skip


def test_token_issuance_against_the_goal_the_floor_and_the_peer() -> None:
    met = _row(report.rows(_token(4400.0, 1.5)), "Token issuance, cached credentials, 1 client")
    assert met[2].startswith("5000/s") and met[3] == "0.88×" and met[4:] == ("≥ 4347/s, p99 < 2 ms", "✔")
    assert _row(report.rows(_token(4400.0, 2.5)), "Token issuance, cached")[-1] == "✘"  # p99 over 2 ms
    assert _row(report.rows(_token(1500.0, 1.0)), "Token issuance, cached")[-1] == "✘"  # rate under 3x
    peer = _row(report.rows(_token(1500.0, 1.0)), "Token issuance against the peer (token-server-2.8.3)")
    assert "cached (bcrypt cost 10), 1 client" in peer[0] and peer[3] == "75.00×"


def _datapath_node(token_pull: float) -> dict[str, object]:
    def variant(push: float, pull: float, digest: float) -> dict[str, object]:
        return {"push": {"median": push}, "pull": {"median": pull}, "digest": {"median": digest}}

    variants = {"token": variant(1.1, token_pull, 0.12), "htpasswd": variant(1.5, 1.0, 0.10),
                "tls": variant(1.0, 1.0, 0.08), "plain": variant(0.5, 0.8, 0.05)}  # fmt: skip
    return {"mode": "datapath-node", "env": {"date": "2026-12-02 06:10 UTC", "operator_commit": "abc1234"},
            "datapath_node": {"size": 100 * MIB, "iterations": 5, "variants": variants,
                              "token_fetch": {"median": 0.03}}}  # fmt: skip


def test_the_real_node_data_path_judges_token_mode_against_tls_only_push_and_pull_apart() -> None:
    rows = report.rows(_datapath_node(token_pull=1.15))
    token = _row(rows, "Data path 100 MiB on the real node, token + TLS: push / pull (median of 5)")
    assert token[1:] == ("1.10 s / 1.15 s", "1.00 s / 1.00 s (TLS only)", "1.10× / 1.15× (both 1.12×)", "≤ 1.2× each",
                         "✔")  # fmt: skip
    assert _row(report.rows(_datapath_node(token_pull=1.25)), "Data path 100 MiB on the real node, token")[-1] == "✘"
    htpasswd = _row(rows, "Data path 100 MiB on the real node, htpasswd + TLS")
    assert htpasswd[3:] == ("1.50× / 1.00× (both 1.25×)", "–", "")
    tls = _row(rows, "Data path 100 MiB on the real node, TLS only")
    assert tls[2:4] == ("0.50 s / 0.80 s (plain HTTP)", "2.00× / 1.25× (both 1.54×)")
    fixed = _row(rows, "Data path on the real node: one `crane digest`")
    assert fixed[1] == "token 0.12 s / htpasswd 0.10 s / tls 0.08 s / plain 0.05 s; token 0.03 s"


def test_the_readme_table_is_rendered_from_the_runs_json(tmp_path: Path) -> None:
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "scale.json").write_text(json.dumps(_scale(90.0)))
    (results / "token.json").write_text(json.dumps(_token(1500.0, 1.0)))
    (results / "datapath-node.json").write_text(json.dumps(_datapath_node(1.0)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nprose\n{report.README_BEGIN}\nold table\n{report.README_END}\n\nmore prose\n")

    table = report.update_readme(readme, results)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nprose\n") and text.endswith("\nmore prose\n")
    lines = table.splitlines()
    assert lines[0] == "| Measure | Operator | Floor | Ratio | Goal | Met | Run |"
    assert all(line.endswith("|") and line.count(" | ") == 6 for line in lines[2:])
    assert all(
        "[scale, 2026-12-01, abc1234](bench/results/scale.json), load 5.0 |" in line
        for line in lines
        if "Scale" in line
    )
    assert any("[token, 2026-12-01, abc1234](bench/results/token.json)" in line for line in lines)
    run = "[datapath-node, 2026-12-02, abc1234](bench/results/datapath-node.json)"
    assert lines[-1].startswith("| Data path on the real node") and run in lines[-1]
    assert report.update_readme(readme, results) == table and readme.read_text() == text  # idempotent


def test_a_readme_without_the_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="bench-table"):
        report.update_readme(readme, tmp_path)
