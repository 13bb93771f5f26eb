"""Triggers that arrive while a Registry is being reconciled fold into one rerun."""

import asyncio

from registry_operator.coalesce import Coalescer


def test_concurrent_triggers_coalesce():
    runs: list[str] = []

    async def run(key):
        runs.append(key)
        await asyncio.sleep(0.01)

    async def main():
        c = Coalescer(run)
        await asyncio.gather(*(c.trigger("a") for _ in range(10)), c.trigger("b"))
        assert c.busy == 0

    asyncio.run(main())
    assert runs.count("a") == 2 and runs.count("b") == 1
