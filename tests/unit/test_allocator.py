"""glibc gives freed heap back after a burst: the operator's RSS is its steady state, not its peak."""

import asyncio
from pathlib import Path

import pytest

from registry_operator import allocator


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(allocator._LIBC is None, reason="not glibc")
def test_trim_returns_the_free_pages_of_a_fragmented_heap():
    # Like a restart's listings: many responses of a few pages (malloc, not pymalloc), every other one kept.
    blocks = [b"x" * (16384 + i % 512) for i in range(4_000)]  # written: resident
    del blocks[::2]
    before = _rss()
    assert allocator.trim()
    assert before - _rss() > 16 * 2**20  # about 32 MiB were free inside the heap
    assert len(blocks) == 2_000


def test_trimmer_trims_once_per_burst_and_at_most_once_per_interval(monkeypatch):
    trims: list[float] = []

    async def main():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(allocator, "trim", lambda: trims.append(loop.time()))
        trimmer = allocator.Trimmer(delay=0.02, interval=0.3)
        start = loop.time()
        for _ in range(100):  # the end of many bursts at once: one trim
            trimmer.request()
        await asyncio.sleep(0.1)
        assert len(trims) == 1 and trims[0] - start >= 0.02
        trimmer.request()  # soon again: waits out the interval
        await asyncio.sleep(0.1)
        assert len(trims) == 1
        await asyncio.sleep(0.25)
        assert len(trims) == 2 and trims[1] - trims[0] >= 0.29

    asyncio.run(main())
