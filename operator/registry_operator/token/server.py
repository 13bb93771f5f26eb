"""Running the token service: listening socket, optional TLS, graceful shutdown on SIGTERM.

The TLS certificate is loaded once at start, like the registry's; the operator rolls the
Deployment when it changes. On SIGTERM the listener closes first and in-flight requests get
``SHUTDOWN_GRACE`` seconds to finish, within Kubernetes' default 30 s termination grace.
Requests are parsed with the bounds in :data:`HANDLER_OPTIONS`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import metrics
from .app import create_app
from .authn import Authenticator
from .limits import RECEIVE_BUFFER_BYTES, SERVER_LIMITS
from .runtime import Runtime
from .throttle import FailureThrottle

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0


class _RequestErrorFilter(logging.Filter):
    """Turns aiohttp's report of a request it could not parse into one line without the request.

    aiohttp logs such a request at ERROR with a traceback whose message quotes the offending bytes:
    for an over-long header, the start of the Basic credentials, so of a user name that may be a
    pasted password. It is the client's fault, so a WARNING naming the error suffices.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
            record.msg, record.args = "refused an unreadable request from %s: %s", (remote, type(exc).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


HTTP_LOG = logging.getLogger("registry_operator.token.http")
HTTP_LOG.addFilter(_RequestErrorFilter())

# aiohttp request handler options, for serve() and for tests that run the app in-process
HANDLER_OPTIONS: dict[str, Any] = {**SERVER_LIMITS, "logger": HTTP_LOG}
SWEEP_INTERVAL = 0.1


async def sweep_garbage(server: web.Server, interval: float = SWEEP_INTERVAL) -> None:
    """Run the cyclic garbage collector soon after any request, instead of when it gets round to it.

    aiohttp leaves some failed requests in reference cycles: an unparseable request's exceptions
    hold, through their tracebacks, the connection's read buffers, and messages quoting each of
    them in full. Python's collector is triggered by counts of objects, not bytes, and such a
    request allocates few, so a full collection may not run for thousands of them: 2,000 requests
    with 1 MB headers on 64 connections left 154 MiB (280 MiB with aiohttp's 256 KiB reads, see
    ``RECEIVE_BUFFER_BYTES``), against 59 MiB with this sweeper. What was alive at start-up is
    frozen (:func:`gc.freeze`), so a collection scans only what requests created since: a few
    milliseconds at most, at most once per ``interval``, and only when requests came in.
    """
    gc.freeze()
    seen = server.requests_count
    while True:
        await asyncio.sleep(interval)
        if server.requests_count != seen:
            seen = server.requests_count
            gc.collect()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``; raises ``ValueError`` otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose connections read at most ``RECEIVE_BUFFER_BYTES`` at a time.

    The receive buffer must be set before ``listen`` for accepted connections to inherit it (and
    the TCP window scale that follows from it), which is why the socket is made here and not by
    aiohttp's TCPSite.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


async def serve(config_path: str, listen: str | None = None, metrics_listen: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT; raises on invalid config or unreadable files at start. `listen` and
    `metrics_listen` override the config's addresses."""
    runtime = Runtime(config_path)
    config = runtime.config()
    host, port = parse_listen(listen or config.listen)
    context = None
    if config.tls_cert_path and config.tls_key_path:
        context = tls_context(config.tls_cert_path, config.tls_key_path)
    authenticator = Authenticator(runtime.htpasswd, FailureThrottle())
    runner = web.AppRunner(create_app(runtime, authenticator), access_log=None, **HANDLER_OPTIONS)
    await runner.setup()
    metrics_runner = web.AppRunner(metrics.create_app(), access_log=None)
    await metrics_runner.setup()
    try:
        if metrics_address := metrics_listen or config.metrics_listen:
            metrics_host, metrics_port = parse_listen(metrics_address)
            await web.TCPSite(metrics_runner, metrics_host, metrics_port).start()
            for address in metrics_runner.addresses:
                log.info("metrics on http://%s:%d%s", address[0], address[1], metrics.PATH)
        sock = listen_socket(host, port)
        site = web.SockSite(runner, sock, ssl_context=context, shutdown_timeout=SHUTDOWN_GRACE)
        await site.start()
        scheme = "https" if context else "http"
        for address in runner.addresses:
            log.info("listening on %s://%s:%d", scheme, address[0], address[1])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        assert runner.server is not None  # set by setup()
        sweeper = asyncio.ensure_future(sweep_garbage(runner.server))
        await stop.wait()
        sweeper.cancel()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        await metrics_runner.cleanup()
        authenticator.close()
