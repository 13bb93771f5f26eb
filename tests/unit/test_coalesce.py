"""The per-Registry loop: triggers fold into one rerun, failures are retried with backoff, none is dropped."""

import asyncio

import pytest

from registry_operator.coalesce import Coalescer, Retry, backoff


def test_concurrent_triggers_coalesce():
    runs: list[str] = []

    async def run(key):
        runs.append(key)
        await asyncio.sleep(0.01)

    async def main():
        c = Coalescer(run)
        for _ in range(10):  # before the run starts: all folded into it
            c.trigger("a")
        c.trigger("b")
        await asyncio.sleep(0.005)
        for _ in range(10):  # while it runs: one more run
            c.trigger("a")
        await c.idle()
        assert c.busy == 0

    asyncio.run(main())
    assert runs.count("a") == 2 and runs.count("b") == 1


def test_a_failed_run_is_retried_with_growing_waits_until_it_succeeds():
    times: list[float] = []

    async def run(key):
        times.append(asyncio.get_running_loop().time())
        if len(times) < 4:
            raise Retry("Secret 'reg-tls': 503 Service Unavailable")

    async def main():
        c = Coalescer(run, base=0.02, cap=1.0)
        c.trigger("a")
        await c.idle()

    asyncio.run(main())
    waits = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == 4
    assert waits[0] >= 0.01 and waits[2] > waits[0]  # 0.02, 0.04, 0.08 less up to half of jitter


def test_a_trigger_during_a_failing_run_is_not_lost():
    calls: list[int] = []

    async def run(key):
        calls.append(1)
        if len(calls) == 1:
            c.trigger("a")  # arrives while the run is in progress, and the run then fails
            raise RuntimeError("boom")

    c: Coalescer

    async def main():
        nonlocal c
        c = Coalescer(run, base=0.01, cap=0.01)
        c.trigger("a")
        await c.idle()

    asyncio.run(main())
    assert len(calls) == 2


def test_an_urgent_trigger_cuts_the_backoff_short():
    calls: list[float] = []

    async def run(key):
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise Retry("429")

    async def main():
        c = Coalescer(run, base=30, cap=30)
        c.trigger("a")
        await asyncio.sleep(0.05)
        c.trigger("a", urgent=True)
        await asyncio.wait_for(c.idle(), 5)

    asyncio.run(main())
    assert len(calls) == 2 and calls[1] - calls[0] < 5


def test_each_failure_is_logged_once(caplog):
    async def run(key):
        if len(caplog.records) < 1 or run.n < 5:
            run.n += 1
            raise Retry("Secret 'x': 403 Forbidden")

    run.n = 0

    async def main():
        c = Coalescer(run, base=0.001, cap=0.001)
        c.trigger(("ns", "reg"))
        await c.idle()

    with caplog.at_level("INFO", logger="registry_operator.coalesce"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("403 Forbidden" in m for m in messages) == 1
    assert any("reconciled after 5 failed attempts" in m for m in messages)


@pytest.mark.parametrize("failures, expected", [(1, 0.5), (2, 1.0), (3, 2.0), (10, 60.0), (1000, 60.0)])
def test_backoff_is_exponential_and_capped(failures, expected):
    assert backoff(failures, 0.5, 60.0, jitter=lambda: 0.0) == expected
    assert backoff(failures, 0.5, 60.0, jitter=lambda: 1.0) == expected / 2


def test_trigger_later_runs_once_at_the_latest_requested_time():
    runs: list[float] = []

    async def run(key):
        runs.append(asyncio.get_running_loop().time())

    async def main():
        c = Coalescer(run)
        start = asyncio.get_running_loop().time()
        c.trigger_later("a", 0.05)
        c.trigger_later("a", 0.15)  # replaces the first: one timer per Registry
        await asyncio.sleep(0.3)
        await c.idle()
        await c.close()
        return start

    start = asyncio.run(main())
    assert len(runs) == 1 and runs[0] - start >= 0.15


def test_drained_is_called_when_the_last_run_finishes():
    drained: list[int] = []

    async def run(key):
        await asyncio.sleep(0.01 if key == "a" else 0.03)

    async def main():
        c = Coalescer(run, drained=lambda: drained.append(c.busy))
        c.trigger("a")
        c.trigger("b")
        await c.idle()
        assert drained == [0]  # not after "a": "b" was still running
        c.trigger("a")
        await c.idle()
        assert drained == [0, 0]

    asyncio.run(main())


def test_light_triggers_refresh_and_anything_else_runs_in_full():
    calls: list[tuple[str, str]] = []
    can_refresh = {"a": True, "b": False, "c": True}

    async def run(key):
        calls.append(("run", key))

    async def refresh(key):
        calls.append(("refresh", key))
        return can_refresh[key]

    async def main():
        c = Coalescer(run, refresh=refresh)
        c.trigger("a", light=True)  # refreshed: nothing else asked for
        c.trigger("b", light=True)  # refresh cannot do it: the full run
        c.trigger("c", light=True)
        c.trigger("c")  # a full trigger folded into light ones: the full run, no refresh
        await c.idle()
        c.trigger("a")
        await c.idle()

    asyncio.run(main())
    def of(key: str) -> list[str]:
        return [what for what, k in calls if k == key]

    assert (of("a"), of("b"), of("c")) == (["refresh", "run"], ["refresh", "run"], ["run"])


def test_a_failed_refresh_is_retried_in_full():
    calls: list[str] = []

    async def run(key):
        calls.append("run")

    async def refresh(key):
        calls.append("refresh")
        raise Retry("Event could not be posted")

    async def main():
        c = Coalescer(run, base=0.001, cap=0.001, refresh=refresh)
        c.trigger("a", light=True)
        await c.idle()

    asyncio.run(main())
    assert calls == ["refresh", "run"]
