"""The operator's log says what matters: a settled operator does not log every liveness probe it answers."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from registry_operator import __main__ as main


@pytest.fixture
def chatty_levels() -> Iterator[None]:
    """Put the chatty loggers' levels back, so no other test sees ours."""
    before = {name: logging.getLogger(name).level for name in main.CHATTY_LOGGERS}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_access_lines(level: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Configure logging at ``level``, answer one probe on the standby liveness endpoint, and return what the
    access log said about it."""
    main.configure_logging(level)
    url = f"http://127.0.0.1:{_free_port()}/healthz"

    async def probe() -> None:
        async with main._standby_liveness(url):
            status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).status)
            assert status == 200

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):  # the handler takes everything; loggers decide
        asyncio.run(probe())
    return [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]


def test_liveness_probes_are_not_logged_below_debug(chatty_levels: None, caplog: pytest.LogCaptureFixture) -> None:
    assert _probe_access_lines("INFO", caplog) == []


def test_debug_logs_every_probe(chatty_levels: None, caplog: pytest.LogCaptureFixture) -> None:
    lines = _probe_access_lines("DEBUG", caplog)
    assert len(lines) == 1 and "GET /healthz" in lines[0]
