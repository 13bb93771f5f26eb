"""<stem>.json, <stem>.md (the Markdown table `python -m bench` prints) and, with matplotlib, <stem>.png; stem
`results` for the phases, `scale` for the growth curve."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .stats import ratio

MIB = 2**20


def _s(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _r(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.2f}×"


def _mib(x: int | None) -> str:
    return "–" if x is None else f"{x / MIB:.0f} MiB"


def _counted(c: dict[str, int]) -> str:
    bcrypt = c.get("bcrypt.hashpw", 0) + c.get("bcrypt.checkpw", 0)
    keys = c.get("keygen.ec", 0) + c.get("keygen.rsa", 0)
    return f"bcrypt {bcrypt} (hashpw {c.get('bcrypt.hashpw', 0)}, checkpw {c.get('bcrypt.checkpw', 0)}), keys {keys}"


Row = tuple[str, str, str, str, str, str]

# A per-Registry cost is "flat" when, at the largest count, it is at most this many times what it was at the
# smallest: the goal of the growth curve is flat or sub-linear cost per Registry.
FLAT = 1.5


def _met(ok: bool) -> str:
    return "✔" if ok else "✘"


def _per(level: dict[str, Any], key: str) -> float:
    return level[key] / level["reconciles"] if level.get("reconciles") else float("nan")


def scale_rows(scale: dict[str, Any]) -> list[Row]:
    """The growth curve: one row per measure, the counts side by side; costs are those of growing to each count
    (from the previous one), so a cost per reconcile that rises with the count is work that grows with it."""
    levels = [lv for lv in scale["levels"] if lv["registries"]]
    if not levels:
        return []
    empty = next((lv for lv in scale["levels"] if not lv["registries"]), None)
    counts = " / ".join(str(lv["registries"]) for lv in levels)
    first, last = levels[0], levels[-1]

    def flat(values: list[float]) -> str:
        return _met(values[-1] <= FLAT * values[0]) if len(values) > 1 else "–"

    top = last["registries"]
    goal = f"≤ {FLAT}× at {top} vs {first['registries']}"
    at_1000 = next((lv["rss"] for lv in levels if lv["registries"] >= 1000), None)
    out: list[Row] = [(
        f"Scale {counts}: operator RSS at rest" + (f" (empty: {_mib(empty['rss'])})" if empty else ""),
        " / ".join(_mib(lv["rss"]) for lv in levels), "–", "–", "≤ 100 MiB at 1000",
        "–" if at_1000 is None else _met(at_1000 <= 100 * MIB),
    )]  # fmt: skip
    if empty:
        per = [(lv["rss"] - empty["rss"]) / lv["registries"] / 1024 for lv in levels]
        out.append(("Scale: RSS above the empty operator, per Registry", " / ".join(f"{x:.0f} KiB" for x in per),
                    "–", "–", "flat or falling", flat([min(per), per[-1]])))  # fmt: skip
    cpu = [_per(lv, "operator_cpu") * 1000 for lv in levels]
    out.append(("Scale: operator CPU per reconcile, growing to each count", " / ".join(f"{x:.1f} ms" for x in cpu),
                "–", _r(ratio(cpu[-1], cpu[0])), goal, flat(cpu)))  # fmt: skip
    reads, writes = [_per(lv, "read_total") for lv in levels], [_per(lv, "write_total") for lv in levels]
    both = [r + w for r, w in zip(reads, writes, strict=True)]
    out.append(("Scale: API reads, writes per reconcile (audit log)",
                " / ".join(f"{r:.1f}, {w:.1f}" for r, w in zip(reads, writes, strict=True)), "–",
                _r(ratio(both[-1], both[0])), goal, flat(both)))  # fmt: skip
    each = [lv["ready"] / lv["added"] * 1000 for lv in levels]
    out.append(("Scale: until all added Registries are Ready (per added Registry)",
                " / ".join(f"{_s(lv['ready'])} ({x:.0f} ms)" for lv, x in zip(levels, each, strict=True)), "–",
                _r(ratio(each[-1], each[0])), goal + " per Registry", flat(each)))  # fmt: skip
    per_registry = " / ".join(f"{lv['reconciles'] / lv['added']:.1f}" for lv in levels)
    out.append(("Scale: reconciles per added Registry", per_registry, "–", "–", "–", ""))
    out.append(("Scale: load average (1 min) when each count was at rest",
                " / ".join(f"{lv['load'][0]:.1f}" for lv in levels), "–", "–", "–", ""))  # fmt: skip
    return out


# Issue 12: cached issuance on one client at 3x the 1449 tokens/s measured before, with p99 under 2 ms.
TOKEN_RATE_GOAL, TOKEN_P99_GOAL_MS = 3 * 1449, 2.0
# Issue 12's goals against the floor (the bare client applying the same objects) and for a restart at 1000.
CONVERGENCE_GOAL, BURST_GOAL, RESTART_GOAL_SECONDS = 1.3, 1.5, 20.0


def _clients(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


def _issuance(n: dict[str, float], cpu: bool = True) -> str:
    out = f"{n['rate']:.0f}/s; {n['p50_ms']:.2f} / {n['p99_ms']:.2f} ms"
    return out + (f"; {n['cpu_per_token_us']:.0f} µs CPU" if cpu else "")


def token_rows(res: dict[str, Any]) -> list[Row]:
    """bench/token/bench_token.py --json: ours against the floor (cached credentials, alternating rounds), and
    against the peer where it ran (one after the other)."""
    out: list[Row] = []
    for pair in res.get("floor", []):
        ours, floor, c = pair["ours"], pair["floor"], pair["concurrency"]
        goal = c == 1
        out.append((
            f"Token issuance, cached credentials, {_clients(c)}: tokens/s; p50 / p99; service CPU per token",
            _issuance(ours), _issuance(floor) + " (pre-signed)", _r(ratio(ours["rate"], floor["rate"])),
            f"≥ {TOKEN_RATE_GOAL}/s, p99 < {TOKEN_P99_GOAL_MS:.0f} ms" if goal else "–",
            _met(ours["rate"] >= TOKEN_RATE_GOAL and ours["p99_ms"] < TOKEN_P99_GOAL_MS) if goal else "",
        ))  # fmt: skip
    runs = res.get("runs", {})
    for label, peer in runs.items():
        name, _, run = label.partition(": ")
        if not name.startswith("peer") or (ours := runs.get(f"ours: {run}")) is None:
            continue
        kind, _, clients = run.partition(", c=")
        kind = kind.removesuffix(" bcrypt")
        cost = res.get("args", {}).get("cost", "?")
        out.append((f"Token issuance against the {name}, {kind} (bcrypt cost {cost}), {_clients(int(clients))}: "
                    "tokens/s; p50 / p99", _issuance(ours, cpu=False), _issuance(peer, cpu=False),
                    _r(ratio(ours["rate"], peer["rate"])), "–", ""))  # fmt: skip
    return out


# Issue 12: on real pods, token mode at most this many times TLS only, for push and for pull.
DATAPATH_NODE_GOAL = 1.2
# (variant, its label, its floor, the floor's label), in table order.
DATAPATH_NODE_PAIRS = (("token", "token + TLS", "tls", "TLS only"), ("htpasswd", "htpasswd + TLS", "tls", "TLS only"),
                       ("tls", "TLS only", "plain", "plain HTTP"))  # fmt: skip


def datapath_node_rows(dp: dict[str, Any]) -> list[Row]:
    """`python -m bench --datapath-node`: each variant against the one without its layer (token and htpasswd
    against TLS only, TLS only against plain HTTP), push and pull judged apart; then the fixed cost of one crane
    process per variant and of one token request, which is where a small gap at this size would come from."""
    v, n, size = dp["variants"], dp["iterations"], f"{dp['size'] // MIB} MiB"
    med = lambda name, op: v[name][op]["median"]  # noqa: E731
    out: list[Row] = []
    for name, label, floor, floor_label in DATAPATH_NODE_PAIRS:
        if name not in v or floor not in v:
            continue
        push, pull = ratio(med(name, "push"), med(floor, "push")), ratio(med(name, "pull"), med(floor, "pull"))
        both = ratio(med(name, "push") + med(name, "pull"), med(floor, "push") + med(floor, "pull"))
        goal = name == "token"
        out.append((
            f"Data path {size} on the real node, {label}: push / pull (median of {n})",
            f"{_s(med(name, 'push'))} / {_s(med(name, 'pull'))}",
            f"{_s(med(floor, 'push'))} / {_s(med(floor, 'pull'))} ({floor_label})",
            f"{_r(push)} / {_r(pull)} (both {_r(both)})",
            f"≤ {DATAPATH_NODE_GOAL}× each" if goal else "–",
            _met(max(push, pull) <= DATAPATH_NODE_GOAL) if goal else "",
        ))  # fmt: skip
    digests = " / ".join(f"{name} {_s(med(name, 'digest'))}" for name in v)
    fetch = _s(dp["token_fetch"]["median"])
    out.append((f"Data path on the real node: one `crane digest` (process, TLS, token, a manifest; median of {n}); "
                "one token request", f"{digests}; token {fetch}", "–", "–", "–", ""))  # fmt: skip
    return out


def rows(res: dict[str, Any]) -> list[Row]:
    """(measure, operator, floor, ratio, goal, met) rows."""
    out: list[Row] = []
    if scale := res.get("scale"):
        out += scale_rows(scale)
    if res.get("mode") == "token":
        out += token_rows(res)
    if dp_node := res.get("datapath_node"):
        out += datapath_node_rows(dp_node)
    if conv := res.get("convergence"):
        n = conv["runs"]
        for what, label in (("children", "all children exist"), ("ready", "Ready=True (floor: Deployment available)")):
            op, fl = conv[what]["operator"], conv[what]["floor"]
            worst = max(ratio(op["p50"], fl["p50"]), ratio(op["p95"], fl["p95"]))
            out.append((
                f"Convergence, {label}, p50 / p95 of {n}", f"{_s(op['p50'])} / {_s(op['p95'])}",
                f"{_s(fl['p50'])} / {_s(fl['p95'])}",
                f"{_r(ratio(op['p50'], fl['p50']))} / {_r(ratio(op['p95'], fl['p95']))}",
                *((f"≤ {CONVERGENCE_GOAL}× both", _met(worst <= CONVERGENCE_GOAL)) if what == "ready" else ("–", "")),
            ))  # fmt: skip
    if (burst := res.get("burst")) and "operator" in burst and "floor" in burst:
        op, fl = burst["operator"], burst["floor"]
        for what, label in (("children", "all children exist"), ("ready", "all Ready (floor: all available)")):
            goal = (f"≤ {BURST_GOAL}×", _met(ratio(op[what], fl[what]) <= BURST_GOAL)) if what == "ready" else ("–", "")
            out.append((f"Burst of {op['n']}, {label}", _s(op[what]), _s(fl[what]),
                        _r(ratio(op[what], fl[what])), *goal))  # fmt: skip
        out.append((f"Burst of {op['n']}: API writes / reads per Registry (audit)",
                    f"{op['writes_per_registry']:.1f} / {op['reads_per_registry']:.1f}",
                    f"{len(burst.get('floor_objects', [])) or 10} / 0", "–", "–", ""))  # fmt: skip
    if rest := res.get("rest"):
        w = rest["write_total"]
        out.append((f"Rest, {rest['registries']} settled, {rest['window']:.0f} s: API writes (audit log)",
                     str(w), "0", "–", "0", _met(w == 0)))  # fmt: skip
        c = rest["counted"]
        work = sum(c.values())
        out.append((f"Rest: {rest['reconciles']} reconciles by periodic resync (every {rest['resync_interval']:.0f} s)",
                    _counted(c), "0", "–", "0", _met(work == 0)))  # fmt: skip
        per = rest["read_total"] / rest["reconciles"] if rest["reconciles"] else float("nan")
        cpu = f", operator CPU {rest['operator_cpu']:.1f} s" if "operator_cpu" in rest else ""
        out.append(("Rest: API reads (audit log)", f"{rest['read_total']} ({per:.1f} per reconcile){cpu}", "–", "–",
                    "–", ""))  # fmt: skip
    if st := res.get("stuck"):
        inputs = st["inputs"]
        each = ", ".join(f"{n} {i['writes_per_minute']:.1f}" for n, i in inputs.items() if not i["rejected"])
        rate = st["writes_per_minute"]
        out.append((f"Stuck on bad input: {len(inputs)} Registries, API writes per minute over {st['window']:.0f} s "
                    "after their first status (audit log)",
                    f"{rate:.1f} ({each}); operator CPU {st['operator_cpu']:.1f} s", "–", "–",
                    "0 after the first status write", _met(st["write_total"] == 0)))  # fmt: skip
        outcomes = "; ".join(
            f"{n}: {'rejected by the API server' if i['rejected'] else i['reason'] or 'no status'}"
            + (f" after {i['first_status']:.1f} s" if i.get("first_status") is not None else "")
            for n, i in inputs.items()
        )
        out.append(("Stuck: Ready reason of each (time to first status)" + ("" if st["settled"] else
                    "; the operator never went quiet"), outcomes, "–", "–", "–", ""))  # fmt: skip
    if rs := res.get("restart"):
        c = rs["counted"]
        work = sum(c.values())
        out.append((f"Restart of {rs['registries']}: writes; bcrypt, key generation",
                    f"{rs['write_total']} writes; {_counted(c)}", "0", "–", "0",
                    _met(work == 0 and rs["write_total"] == 0)))  # fmt: skip
    for key in ("restart", "restart_top"):
        if rs := res.get(key):
            n = rs["registries"]
            cpu = f", operator CPU {rs['operator_cpu']:.0f} s" if "operator_cpu" in rs else ""
            goal = (f"≤ {RESTART_GOAL_SECONDS:.0f} s, 0 writes", _met(rs["seconds"] <= RESTART_GOAL_SECONDS and
                    rs["write_total"] == 0)) if n >= 1000 else ("–", "")  # fmt: skip
            out.append((f"Restart with {n}: until settled; reconciles and reads per Registry; writes",
                        f"{_s(rs['seconds'])}; {rs['reconciles'] / n:.1f} and {rs['read_total'] / n:.0f}{cpu}; "
                        f"{rs['write_total']} writes", "–", "–", *goal))  # fmt: skip
    if mem := res.get("memory"):
        counts = sorted({m["registries"] for m in mem["levels"]})
        worst = {n: max(m["rss"] for m in mem["levels"] if m["registries"] == n) for n in counts}
        fresh = {n: min(m["rss"] for m in mem["levels"] if m["registries"] == n) for n in counts}
        peak = max(m["hwm"] for m in mem["levels"])
        others = f", {res['unrelated_secrets']:,} unrelated Secrets" if res.get("unrelated_secrets") else ""
        out.append((
            "Operator RSS at " + " / ".join(map(str, counts)) + f" Registries{others} (highest of the samples at each)",
            " / ".join(_mib(worst[n]) for n in counts), "–", "–", "≤ 100 MiB at 1000",
            _met(worst[counts[-1]] <= 100 * MIB) if counts[-1] >= 1000 else "–",
        ))  # fmt: skip
        out.append(
            (
                "Operator RSS, lowest sample at each; peak VmHWM",
                " / ".join(_mib(fresh[n]) for n in counts) + f"; peak {_mib(peak)}",
                "–",
                "–",
                "–",
                "",
            )
        )
    if dp := res.get("datapath"):
        v = dp["variants"]
        size = f"{dp['size'] // MIB} MiB"

        def total(name: str) -> float:
            return v[name]["push"]["median"] + v[name]["pull"]["median"]

        for name, label in (("operator", "htpasswd + TLS (operator)"), ("token", "token + TLS (operator)"),
                            ("tls", "TLS only"), ("bcrypt4", "htpasswd bcrypt cost 4 + TLS (what-if)")):  # fmt: skip
            if name not in v:
                continue
            push = ratio(v[name]["push"]["median"], v["plain"]["push"]["median"])
            pull = ratio(v[name]["pull"]["median"], v["plain"]["pull"]["median"])
            both = ratio(total(name), total("plain"))
            goal = name in ("operator", "token")
            out.append((
                f"Data path {size}, {label}: push / pull (median of {dp['iterations']})",
                f"{_s(v[name]['push']['median'])} / {_s(v[name]['pull']['median'])}",
                f"{_s(v['plain']['push']['median'])} / {_s(v['plain']['pull']['median'])}",
                f"{_r(push)} / {_r(pull)} (both {_r(both)})", "≤ 1.3×" if goal else "–",
                _met(max(push, pull) <= 1.3) if goal else "",
            ))  # fmt: skip
    if gcs := res.get("gc"):
        fs, s3 = gcs["filesystem"], gcs.get("s3")
        both = lambda key: " / ".join(_s(r[key]) for r in (fs, s3) if r)  # noqa: E731
        where = "filesystem / S3 (versitygw)" if s3 else "filesystem (S3: versitygw not built)"
        size = f"{fs['bytes'] / MIB:.0f} MiB in {fs['blobs']} blobs, half garbage"
        out.append((f"GC read-only window, {size}: {where} (registry run directly, no rollout)",
                    both("window"), "–", "–", "–", ""))  # fmt: skip
        out.append((f"GC garbage-collect alone / usage measurement (before + after): {where}",
                    " / ".join(f"{_s(r['collect'])} + {_s(r['measure_before'] + r['measure_after'])}"
                               for r in (fs, s3) if r), "–", "–", "–", ""))  # fmt: skip
        out.append((f"GC freed (measured): {where}",
                    " / ".join(f"{r['measured'].get('blobsFreed', '?')} blobs, "
                               f"{_mib(r['measured'].get('bytesFreed'))}" for r in (fs, s3) if r),
                    "–", "–", "–", ""))  # fmt: skip
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["| Measure | Operator | Floor | Ratio | Goal | Met |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(res)]
    env = res.get("env", {})
    lines += ["", f"Mode `{res.get('mode')}`, operator {env.get('operator_commit', '?')}, "
              f"{env.get('cpus', '?')} CPUs, Kubernetes {env.get('kubernetes', '?')}, "
              f"{env.get('nodes', '?')} kwok nodes, total {res.get('seconds', 0):.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


# The README's Performance table lies between these lines; `python -m bench --readme` rewrites it.
README_BEGIN = "<!-- bench-table: python -m bench --readme renders this table from bench/results/*.json -->"
README_END = "<!-- /bench-table -->"
# The runs the README cites, in table order: committed in bench/results/ (the rest of it is git-ignored).
README_RUNS = ("results.json", "scale.json", "token.json", "datapath-node.json")


def run_label(res: dict[str, Any]) -> str:
    env = res.get("env", {})
    return f"{res.get('mode', '?')}, {env.get('date', '?')[:10]}, {env.get('operator_commit', '?')}"


def readme_table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Every row of every run, each naming its run (a link to the JSON file it was rendered from) and the load
    average it met: (link target relative to the README, results) pairs."""
    lines = ["| Measure | Operator | Floor | Ratio | Goal | Met | Run |", "|---|---|---|---|---|---|---|"]
    for path, res in runs:
        load = res.get("env", {}).get("load")
        run = f"[{run_label(res)}]({path})" + (f", load {load[0]:.1f}" if load else "")
        lines += ["| " + " | ".join((*row, run)) + " |" for row in rows(res)]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, results: Path) -> str:
    """Replace the README's table with the one rendered from the runs of `README_RUNS` present in `results`;
    returns the table. Raises ValueError when the README has no table markers."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_BEGIN!r} ... {README_END!r} block")
    runs = [(str((results / name).relative_to(readme.parent)), json.loads((results / name).read_text()))
            for name in README_RUNS if (results / name).exists()]  # fmt: skip
    table = readme_table(runs)
    readme.write_text(text[: start + len(README_BEGIN)] + "\n" + table + text[end:])
    return table


def _pyplot() -> Any:
    """matplotlib's pyplot without a display, or None when matplotlib is not installed (pip install '.[bench]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_scale(res: dict[str, Any], path: Path) -> bool:
    """The growth curve against the count (log scale): RSS at rest, CPU and API requests per reconcile, and the
    time until all added Registries were Ready. False when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    all_levels = res["scale"]["levels"]
    levels = [lv for lv in all_levels if lv["registries"]]
    xs = [lv["registries"] for lv in levels]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    rss = axes[0]
    rss.plot(xs, [lv["rss"] / MIB for lv in levels], "o-", label="RSS at rest")
    rss.plot(xs, [lv["hwm"] / MIB for lv in levels], "^:", color="grey", label="peak (VmHWM)")
    if empty := next((lv for lv in all_levels if not lv["registries"]), None):
        rss.axhline(empty["rss"] / MIB, color="grey", linestyle="-.", label="0 Registries")
    rss.axhline(100, color="red", linestyle="--", label="goal at 1000")
    rss.set_ylabel("MiB")
    rss.set_title("Operator memory")
    cpu = axes[1]
    cpu.plot(xs, [_per(lv, "operator_cpu") * 1000 for lv in levels], "o-")
    cpu.set_ylabel("ms")
    cpu.set_title("Operator CPU per reconcile")
    api = axes[2]
    api.plot(xs, [_per(lv, "read_total") for lv in levels], "o-", label="reads")
    api.plot(xs, [_per(lv, "write_total") for lv in levels], "s-", label="writes")
    api.set_title("API requests per reconcile (audit)")
    ready = axes[3]
    ready.plot(xs, [lv["ready"] / lv["added"] * 1000 for lv in levels], "o-")
    for lv in levels:
        ready.annotate(f"{lv['ready']:.0f} s", (lv["registries"], lv["ready"] / lv["added"] * 1000),
                       textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ready.set_ylabel("ms per added Registry")
    ready.set_title("Until all added are Ready (total labelled)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("Registries")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    rss.legend(fontsize=8)
    api.legend(fontsize=8)
    loads = ", ".join(f"{lv['load'][0]:.1f}" for lv in levels)
    fig.suptitle(f"Operator {res['env'].get('operator_commit', '?')}, {res['env'].get('cpus', '?')} CPUs, "
                 f"load average at each count {loads}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot(res: dict[str, Any], path: Path) -> bool:
    """The phases' picture; False when matplotlib is not installed."""
    if "scale" in res:
        return plot_scale(res, path)
    if "datapath_node" in res:  # a handful of numbers: the table says it all
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    if conv := res.get("convergence"):
        s = conv["samples"]
        data = [[r["children"] for r in s["operator"]], [r["children"] for r in s["floor"]],
                [r["ready"] for r in s["operator"]], [r["ready"] for r in s["floor"]]]  # fmt: skip
        axes[0].boxplot(data)
        axes[0].set_xticks([1, 2, 3, 4], ["children\noperator", "children\nfloor", "Ready\noperator", "Ready\nfloor"])
        axes[0].set_ylabel("seconds after create")
        axes[0].set_title(f"Convergence ({conv['runs']} runs)")
    if mem := res.get("memory"):
        pts = sorted((m["registries"], m["rss"] / MIB) for m in mem["levels"])
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="RSS")
        axes[1].axhline(100, color="red", linestyle="--", label="goal")
        axes[1].set_xlabel("Registries")
        axes[1].set_ylabel("MiB")
        axes[1].set_title("Operator memory")
        axes[1].legend()
    if dp := res.get("datapath"):
        names = list(dp["variants"])
        xs = range(len(names))
        axes[2].bar([x - 0.2 for x in xs], [dp["variants"][n]["push"]["median"] for n in names], 0.4, label="push")
        axes[2].bar([x + 0.2 for x in xs], [dp["variants"][n]["pull"]["median"] for n in names], 0.4, label="pull")
        axes[2].set_xticks(list(xs), names, rotation=20)
        axes[2].set_ylabel("seconds (median)")
        axes[2].set_title(f"Data path, {dp['size'] // MIB} MiB image")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(res: dict[str, Any], out: Path, stem: str = "results") -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res)
    (out / f"{stem}.md").write_text(md)
    try:
        plot(res, out / f"{stem}.png")
    except Exception as exc:  # noqa: BLE001 - the plot is optional, the numbers are not
        print(f"{stem}.png not written: {type(exc).__name__}: {exc}")
    return md
