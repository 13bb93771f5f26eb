"""Fixtures for the end-to-end suite: the real registry (via podrunner) and real clients.

``tests.support`` is imported by package name, so the repository root must be importable whatever pytest's
import mode and working directory are.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
