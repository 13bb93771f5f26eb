"""The floor of token issuance: the token service's own server answering every ``GET /token`` with one token
signed at start.

Same aiohttp application settings (body limit, the answer-counting and body-size middlewares), the same
handler options (request-line and header bounds), the same listening socket and garbage sweeper as
``registry_operator.token.server.serve``, and a body of the same shape and size. What is left is HTTP on
loopback and aiohttp itself: our issuance minus this is what authentication, the rules and signing cost.

Usage: python bench/token/floor.py --config CONFIG.json --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web
from common import REPO_ROOT  # noqa: F401  (puts the operator package on sys.path)

from registry_operator.token.app import _NO_STORE, refuse_large_bodies
from registry_operator.token.config import TOKEN_PATH
from registry_operator.token.limits import MAX_BODY_BYTES
from registry_operator.token.metrics import count_answers
from registry_operator.token.runtime import Runtime
from registry_operator.token.scope import parse_scopes
from registry_operator.token.server import HANDLER_OPTIONS, listen_socket, parse_listen, sweep_garbage
from registry_operator.token.tokens import issue_token

SCOPE = "repository:team-a/app:pull,push"


def presigned(runtime: Runtime) -> dict[str, object]:
    """One token for alice, signed now with the service's key, as ``GET /token`` would answer it."""
    config = runtime.config()
    token = issue_token(
        runtime.signer(), issuer=config.issuer, service=config.services[0], subject="alice",
        access=parse_scopes([SCOPE]), ttl_seconds=config.ttl_seconds,
    )  # fmt: skip
    return token.response()


async def serve(config_path: str, listen: str) -> None:
    body = presigned(Runtime(config_path))

    async def get_token(_: web.Request) -> web.Response:
        return web.json_response(body, headers=_NO_STORE)

    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[count_answers, refuse_large_bodies])
    app.router.add_get(TOKEN_PATH, get_token)
    runner = web.AppRunner(app, access_log=None, **HANDLER_OPTIONS)
    await runner.setup()
    try:
        await web.SockSite(runner, listen_socket(*parse_listen(listen))).start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        assert runner.server is not None
        sweeper = asyncio.ensure_future(sweep_garbage(runner.server))
        await stop.wait()
        sweeper.cancel()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    asyncio.run(serve(args.config, args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
