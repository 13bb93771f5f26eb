"""Fixtures of the pure unit tests (no cluster)."""

import pytest
from builders import Pipeline


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline()
