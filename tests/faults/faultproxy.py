"""A fault-injecting HTTPS proxy between the operator and kube-apiserver.

Why a proxy of our own rather than a TCP-level one: the faults issue 9 is about are HTTP answers (429 with
Retry-After, 500, 503, 409 on a write) as well as broken connections and latency, and the proxy must see
methods and paths to count writes per Registry. It is a real server on 127.0.0.1 with its own certificate
(issued by `registry_operator.pki`, the project's one certificate builder, for the IP 127.0.0.1 by a
throwaway CA), so the operator's clients (lightkube over httpx2, kopf over aiohttp) do a normal TLS handshake
and send their ServiceAccount bearer token, which the proxy passes through untouched: the API server still
authenticates and authorizes the operator as itself.

Everything is forwarded, including watches (streamed chunk by chunk, as they arrive). A `Faults` schedule
decides per request, with one draw of a seeded random generator, whether to:

- `reset`: abort the connection (TCP RST) before anything reaches the API server;
- `reset_after`: forward the request, then abort instead of answering: the write happened, the client does
  not know it (the nastiest case for idempotency);
- `latency`: delay the request by up to `max_latency` seconds, then forward it;
- `throttle`: answer 429 TooManyRequests with `Retry-After`;
- `error`: answer 500 or 503 (alternately) with a Kubernetes Status body;
- `conflict`: answer 409 Conflict to a share of the writes (PATCH/POST/PUT/DELETE).

`cut_streams()` aborts every open watch at once, like an API server restart or a load balancer timeout.
Every request is recorded (`Record`), so tests count what reached the API server and what was refused.

The proxy runs its own event loop in a daemon thread (`FaultProxy.start()`/`stop()`), so a synchronous test
can start it, change its schedule at any moment (`set_faults`) and read its records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web

from registry_operator import pki

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes for the body it sends.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})  # fmt: skip


@dataclass(frozen=True)
class Faults:
    """Per-request fault probabilities and the latency bound.

    One uniform draw per request picks at most one of reset, reset_after, latency, throttle and error (their
    sum must stay ≤ 1), so those are exact shares of all requests. `conflict` is the share of the remaining
    writes answered 409, with a second draw: writes are few next to reads and watches, and a share of all
    requests would hardly ever hit one."""

    reset: float = 0.0
    reset_after: float = 0.0
    latency: float = 0.0
    throttle: float = 0.0
    error: float = 0.0
    conflict: float = 0.0
    max_latency: float = 1.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.total > 1.0 or not 0 <= self.conflict <= 1:
            raise ValueError(f"fault probabilities add up to {self.total:.2f} > 1, or conflict is not in [0, 1]")

    @property
    def total(self) -> float:
        return self.reset + self.reset_after + self.latency + self.throttle + self.error

    def pick(self, u: float, v: float, write: bool) -> str | None:
        """The fault for a request whose draws are `u` and `v` in [0, 1), or None."""
        for name in ("reset", "reset_after", "latency", "throttle", "error"):
            p = getattr(self, name)
            if u < p:
                return name
            u -= p
        return "conflict" if write and v < self.conflict else None


NO_FAULTS = Faults()


@dataclass(frozen=True)
class Record:
    """One request as the proxy saw it. `status` is what the client got (None: connection aborted);
    `forwarded` says whether the API server received it."""

    at: float  # time.time() when the request arrived
    method: str
    path: str
    watch: bool
    fault: str | None
    forwarded: bool
    status: int | None
    name: str | None  # the object's name: from the path, or for a create from its body (an Event: its object's)

    @property
    def write(self) -> bool:
        return self.method in WRITE_METHODS


def _object_name(method: str, path: str, body: bytes) -> str | None:
    """The name in an item path (`.../namespaces/NS/<resource>/NAME[/status]`); for a POST to a collection the
    created object's name, or for an Event the name of the object it is about."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2 :]  # <resource> [NAME [subresource]]
        if len(rest) >= 2:
            return rest[1]
    if method != "POST" or not body:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    involved = obj.get("involvedObject") or obj.get("regarding")
    if isinstance(involved, dict) and involved.get("name"):
        return str(involved["name"])
    return (obj.get("metadata") or {}).get("name")


def _status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes `Status` object, as the API server answers errors (clients parse it)."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()  # fmt: skip


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), not a polite FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultProxy:
    """HTTPS reverse proxy to `upstream` (https://host:port), trusting `upstream_ca_pem` for it."""

    def __init__(self, upstream: str, upstream_ca_pem: bytes, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.seed = seed
        self.records: list[Record] = []
        self.ca = pki.issue_ca("fault-proxy test CA")
        self._serving = pki.issue_server(self.ca, ["127.0.0.1"])
        self._upstream_ca = upstream_ca_pem
        self._faults = NO_FAULTS
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._streams: set[asyncio.BaseTransport] = set()  # the connections of open watches
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -------------------------------------------------------------------------------------------- control

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def set_faults(self, faults: Faults) -> None:
        """Replace the schedule; it applies to requests arriving from now on."""
        self._faults = faults

    def cut_streams(self) -> int:
        """Abort every open watch (TCP RST); returns how many were cut."""
        assert self._loop is not None

        async def cut() -> int:
            streams = list(self._streams)
            for transport in streams:
                _abort(transport)
            return len(streams)

        return asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    def snapshot(self, since: float = 0.0) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.at >= since]

    # -------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=main, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError(f"the fault proxy did not start: {failure[0]!r}") from failure[0]
        if not self.port:
            raise RuntimeError("the fault proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ssl_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # load_cert_chain reads files only: a private temporary directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="fault-proxy-") as tmp:
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_bytes(self._serving.cert_pem)
            key.write_bytes(self._serving.key_pem)
            server.load_cert_chain(cert, key)
        server.set_alpn_protocols(["http/1.1"])
        client = ssl.create_default_context(cadata=self._upstream_ca.decode())
        return server, client

    async def _serve(self) -> None:
        server_ctx, client_ctx = self._ssl_contexts()
        # No connection limit: kopf keeps one watch per resource open, lightkube adds its own requests.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ctx, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away (a killed operator, a closed watch) cancels its
        # upstream request too, instead of leaving a watch open on the API server until its timeout.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ctx, backlog=512)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for transport in list(self._streams):
            _abort(transport)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -------------------------------------------------------------------------------------------- requests

    def _record(self, request: web.BaseRequest, at: float, watch: bool, fault: str | None, forwarded: bool,
                status: int | None, body: bytes) -> None:  # fmt: skip
        record = Record(at, request.method, request.path, watch, fault, forwarded, status,
                        _object_name(request.method, request.path, body))  # fmt: skip
        with self._lock:
            self.records.append(record)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        query = parse_qs(urlsplit(str(request.rel_url)).query)
        watch = query.get("watch", ["false"])[0] in ("true", "1")
        write = request.method in WRITE_METHODS
        faults = self._faults
        with self._lock:
            fault = faults.pick(self._rng.random(), self._rng.random(), write)
            delay = self._rng.uniform(0, faults.max_latency) if fault == "latency" else 0.0
        body = await request.read()

        if fault == "reset":
            self._record(request, at, watch, fault, False, None, body)
            _abort(request.transport)
            return web.Response(status=499)  # never sent: the connection is gone
        if fault == "throttle":
            self._record(request, at, watch, fault, False, 429, body)
            return web.Response(
                status=429, body=_status_body(429, "TooManyRequests", "injected by the fault proxy"),
                headers={"Retry-After": str(faults.retry_after)}, content_type="application/json",
            )  # fmt: skip
        if fault == "error":
            code = 500 if self._rng.random() < 0.5 else 503
            reason = "InternalError" if code == 500 else "ServiceUnavailable"
            self._record(request, at, watch, fault, False, code, body)
            return web.Response(status=code, body=_status_body(code, reason, "injected by the fault proxy"),
                                content_type="application/json")  # fmt: skip
        if fault == "conflict":
            self._record(request, at, watch, fault, False, 409, body)
            return web.Response(
                status=409,
                body=_status_body(409, "Conflict", "the object has been modified; injected by the fault proxy"),
                content_type="application/json",
            )  # fmt: skip
        if delay:
            await asyncio.sleep(delay)
        return await self._forward(request, at, watch, fault, body)

    async def _forward(self, request: web.Request, at: float, watch: bool, fault: str | None,
                       body: bytes) -> web.StreamResponse:  # fmt: skip
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            upstream = await self._session.request(
                request.method, self.upstream + str(request.rel_url), headers=headers, data=body or None,
                allow_redirects=False,
            )  # fmt: skip
        except (aiohttp.ClientError, OSError):
            self._record(request, at, watch, fault, False, 502, body)
            return web.Response(status=502, body=_status_body(502, "BadGateway", "upstream unreachable"),
                                content_type="application/json")  # fmt: skip
        async with upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
            if fault == "reset_after":
                if not watch:  # a watch never ends: its request reached the API server, that is enough
                    await upstream.read()
                self._record(request, at, watch, fault, True, None, body)
                _abort(request.transport)
                return web.Response(status=499)
            if not watch:
                payload = await upstream.read()
                self._record(request, at, watch, fault, True, upstream.status, body)
                return web.Response(status=upstream.status, body=payload, headers=out_headers)
            self._record(request, at, watch, fault, True, upstream.status, body)
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            transport = request.transport
            if transport is not None:
                self._streams.add(transport)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError):
                pass  # either side went away (a cut stream, a killed operator): nothing left to relay
            finally:
                self._streams.discard(transport)  # type: ignore[arg-type]
            return response


def kubeconfig_via(kubeconfig: dict, proxy: FaultProxy) -> dict:
    """A copy of `kubeconfig` (parsed YAML) whose clusters point at the proxy and trust its CA; the users
    (a ServiceAccount token) are kept, so the API server sees the very same identity."""
    import base64

    ca = base64.b64encode(proxy.ca.cert_pem).decode()
    clusters = [{**c, "cluster": {"server": proxy.url, "certificate-authority-data": ca}}
                for c in kubeconfig["clusters"]]  # fmt: skip
    return {**kubeconfig, "clusters": clusters}


def owner(record: Record, names: Iterable[str]) -> str:
    """The Registry (of `names`) a request is about: the longest name the object's name starts with (the
    Registry itself, its children `<registry>-<suffix>`, Events about it), or `""`."""
    obj = record.name or ""
    return next((n for n in sorted(names, key=len, reverse=True)
                 if obj == n or obj.startswith((n + "-", n + "."))), "")  # fmt: skip


def writes_by(records: Iterable[Record], names: Iterable[str], forwarded_only: bool = True) -> dict[str, int]:
    """Write requests per Registry (`owner`); writes about nothing of ours count under `""`."""
    names = list(names)
    out = dict.fromkeys([*names, ""], 0)
    for r in records:
        if r.write and (r.forwarded or not forwarded_only):
            out[owner(r, names)] += 1
    return out
