"""sys.path for the benchmarks: hack/ (localcluster), the repository root (tests.support) and the operator
package, from `REGISTRY_BENCH_OPERATOR_DIR` when set (a snapshot of operator/) else this checkout's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPERATOR_DIR = Path(os.environ.get("REGISTRY_BENCH_OPERATOR_DIR") or REPO / "operator").resolve()

for _path in (REPO, REPO / "hack", OPERATOR_DIR):  # the operator first: it wins over any installed copy
    if str(_path) in sys.path:
        sys.path.remove(str(_path))
    sys.path.insert(0, str(_path))
