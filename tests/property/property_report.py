"""The property suite's numbers: outcome counts, write rates, operator log findings (standard library only,
so that conftest.py can import it without hypothesis)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

SUMMARY = pytest.StashKey[list[str]]()

_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class Traceback:
    ours: bool  # a frame of registry_operator/ is on the stack
    exception: str  # the exception line


def tracebacks(log: str) -> list[Traceback]:
    """Every traceback in an operator log, with whether our package is on its stack."""
    out = []
    for block in log.split(_TRACEBACK)[1:]:
        frames, exception = [], ""
        for line in block.splitlines()[1:]:
            if line.startswith(" "):
                frames.append(line)
            else:
                exception = line.strip()
                break
        ours = any("/registry_operator/" in f for f in frames if f.lstrip().startswith("File "))
        out.append(Traceback(ours, exception[:200]))
    return out


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summary(results: Sequence[Any], window: float, durations: dict[str, float], log: str,
            hazards: Any) -> list[str]:
    """Human-readable lines: what the API server refused (by field), what settled how, writes, the log."""
    rejected = [r for r in results if not r.accepted]
    accepted = [r for r in results if r.accepted]
    lines = [f"{len(results)} generated Registries: {len(rejected)} rejected by the API server, "
             f"{len(accepted)} accepted"]
    by_field = Counter(f for r in rejected for f in (r.rejected_fields or ["(no field path)"]))
    lines.append("rejected, by field: " + ", ".join(f"{f} {n}" for f, n in by_field.most_common()))
    outcomes = Counter(r.outcome if r.settled else "NOT SETTLED" for r in accepted)
    lines.append("accepted, by outcome: " + ", ".join(f"{o} {n}" for o, n in outcomes.most_common()))
    times = [r.settled_after for r in accepted if r.settled_after is not None]
    if times:
        lines.append(f"create -> settled: p50 {_pct(times, 0.5):.1f}s, p95 {_pct(times, 0.95):.1f}s, "
                     f"max {max(times):.1f}s")
    per_minute = [r.writes * 60 / window for r in accepted]
    if per_minute:
        noisy = sum(1 for w in per_minute if w)
        lines.append(f"writes per Registry per minute after settling ({window:.0f}s window, audit log): "
                     f"max {max(per_minute):.1f}, mean {statistics.fmean(per_minute):.3f}, "
                     f"total {sum(r.writes for r in accepted)}; Registries with any write: {noisy}")
    tally: dict[str, Counter[str]] = {}
    for r in results:
        end = "rejected" if not r.accepted else (r.outcome if r.settled else "NOT SETTLED")
        for h in hazards(r.case):
            tally.setdefault(h, Counter())[end.split(", then ")[-1]] += 1
    for h, c in sorted(tally.items()):
        lines.append(f"  {h}: " + ", ".join(f"{o} {n}" for o, n in c.most_common()))
    found = tracebacks(log)
    ours = Counter(t.exception for t in found if t.ours)
    other = Counter(t.exception for t in found if not t.ours)
    lines.append(f"operator log: {len(found)} tracebacks ({sum(ours.values())} through registry_operator), "
                 f"{len(re.findall(r' ERROR ', log))} ERROR lines")
    for exc, n in (ours + other).most_common(5):
        lines.append(f"  {n}x {exc}")
    lines.append("durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in durations.items()))
    return lines
