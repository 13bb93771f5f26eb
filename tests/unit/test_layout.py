"""The test tree itself: pytest imports test modules by basename (rootdir-relative, no packages), so two files
with one name in different suites stop the collection of the whole tree. Run with `tests/unit` alone, this
catches it before the full suite does."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
