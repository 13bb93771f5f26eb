"""Small statistics helpers: percentiles without numpy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    data = [v for v in values if not math.isnan(v)]
    if not data:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "n": len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "min": min(data),
        "max": max(data),
        "mean": statistics.fmean(data),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
