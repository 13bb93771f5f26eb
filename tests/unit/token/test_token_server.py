"""What the server adds around the app: a small receive window, an idle timeout, no request bytes
in its error logs, and prompt collection of the reference cycles aiohttp leaves behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import weakref
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from registry_operator.token.app import create_app
from registry_operator.token.authn import Authenticator
from registry_operator.token.limits import IDLE_SECONDS, RECEIVE_BUFFER_BYTES
from registry_operator.token.runtime import Runtime
from registry_operator.token.server import HANDLER_OPTIONS, listen_socket, sweep_garbage
from registry_operator.token.throttle import FailureThrottle


def test_connections_inherit_the_small_receive_buffer() -> None:
    listener = listen_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname())
        listener.setblocking(True)
        accepted, _ = listener.accept()
        with client, accepted:
            # Linux doubles the value for bookkeeping; the default would be 128 KiB or more
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * RECEIVE_BUFFER_BYTES
    finally:
        listener.close()


def test_unparseable_requests_are_logged_without_their_bytes(mounted: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = b"SeCrEt-pasted-password"

    async def scenario() -> bytes:
        runtime = Runtime(mounted.config_path)
        authenticator = Authenticator(runtime.htpasswd, FailureThrottle())
        server = TestServer(create_app(runtime, authenticator), host="127.0.0.1", port=0)
        await server.start_server(**HANDLER_OPTIONS)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /token HTTP/1.1\r\nAuthorization: Basic " + secret * 1000 + b"\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            await server.close()
            authenticator.close()

    with caplog.at_level(logging.DEBUG, logger="registry_operator.token"):
        assert asyncio.run(scenario()).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    (record,) = [r for r in caplog.records if r.name == "registry_operator.token.http"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == "refused an unreadable request from 127.0.0.1: LineTooLong"
    assert b"SeCrEt".decode() not in caplog.text


def test_connections_that_never_finish_a_request_are_closed(mounted: Any) -> None:
    async def scenario() -> list[bytes]:
        runtime = Runtime(mounted.config_path)
        authenticator = Authenticator(runtime.htpasswd, FailureThrottle())
        server = TestServer(create_app(runtime, authenticator), host="127.0.0.1", port=0)
        await server.start_server(**{**HANDLER_OPTIONS, "keepalive_timeout": 0.2})
        try:
            silent = await asyncio.open_connection("127.0.0.1", server.port)
            slow = await asyncio.open_connection("127.0.0.1", server.port)
            slow[1].write(b"GET /token HTTP/1.1\r\nHost: t\r\n")  # and never the rest
            return await asyncio.wait_for(asyncio.gather(silent[0].read(), slow[0].read()), 5)
        finally:
            await server.close()
            authenticator.close()

    assert asyncio.run(scenario()) == [b"", b""]  # both closed by the service, unanswered
    assert HANDLER_OPTIONS["keepalive_timeout"] == IDLE_SECONDS


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.buffer = bytes(1 << 20)


def test_garbage_cycles_are_swept_soon_after_requests() -> None:
    class Server:
        requests_count = 0

    async def scenario() -> tuple[bool, bool]:
        server = Server()
        sweeper = asyncio.ensure_future(sweep_garbage(server, interval=0.01))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        try:
            idle = weakref.ref(_Cycle())
            await asyncio.sleep(0.05)
            kept_while_idle = idle() is not None  # no requests: no collection
            busy = weakref.ref(_Cycle())
            server.requests_count += 1
            await asyncio.sleep(0.05)
            return kept_while_idle, busy() is None
        finally:
            sweeper.cancel()
            gc.unfreeze()

    gc.disable()  # only the sweeper collects
    try:
        assert asyncio.run(scenario()) == (True, True)
    finally:
        gc.enable()
