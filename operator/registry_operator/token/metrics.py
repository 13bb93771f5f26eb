"""The token service's Prometheus metrics: its answers by status code, served on a listener of their own.

In token mode a client that cannot get a token never reaches the registry with one, so only the token
service can say that logins fail for a server-side reason (the alert RegistryTokenServiceErrors). `/metrics`
is served on `metricsListen`, plain HTTP and never on the token port: that one is reached by users, often
through an Ingress, and the pod's metrics are for Prometheus only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from .config import TOKEN_PATH

PATH = "/metrics"
REQUESTS = Counter(
    "registry_token_requests_total", "Answers of the token endpoint, by HTTP status code.", ["code"]
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer of the token endpoint, including refusals and failures (probes are not counted)."""
    if request.path != TOKEN_PATH:
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(str(exc.status)).inc()
        raise
    except Exception:
        REQUESTS.labels("500").inc()  # what aiohttp answers for it
        raise
    REQUESTS.labels(str(response.status)).inc()
    return response


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get(PATH, _metrics)
    return app
