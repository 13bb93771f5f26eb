"""`python -m registry_operator`: run the operator against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator

import kopf
from aiohttp import web
from lightkube import AsyncClient

from . import allocator, handlers, metrics, permissions
from . import config as config_
from .leader import Elector

# Below DEBUG these say one line per API request, per handled child event, and per liveness probe or metrics
# scrape (aiohttp's access log: two lines a minute per replica, forever, from a settled operator).
CHATTY_LOGGERS = ("httpx2", "httpx", "kopf.objects", "aiohttp.access")


def configure_logging(level: str) -> None:
    """Log at ``level``; the chatty loggers only from WARNING unless ``level`` is DEBUG, so what matters is not
    drowned."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level.upper() != "DEBUG":
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.asynccontextmanager
async def _standby_liveness(url: str | None) -> AsyncIterator[None]:
    """Answer the liveness probe while waiting for the Lease: a standby replica is healthy, and without this
    its kubelet would restart it over and over. kopf serves the same address once it runs."""
    if url is None:
        yield
        return
    parts = urllib.parse.urlsplit(url)
    app = web.Application()
    async def standby(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app.router.add_get(parts.path or "/", standby)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname, parts.port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _run(config: config_.Config, liveness: str | None) -> int:
    """Run kopf until it is stopped by a signal (exit 0) or, under leader election, the Lease is lost (1);
    exit 2 at once when RBAC does not let it watch what it must, or the metrics port is taken."""
    if not await permissions.check(config):
        return 2
    if config.sees_all_namespaces:
        handlers.watch_namespaces()
    stop = asyncio.Event()
    hold = None
    # Before the Lease: a standby replica is scraped too, and says it is one.
    if config.metrics_port and not metrics.serve(config.metrics_port):
        return 2
    if config.leader_election:
        elector = Elector(AsyncClient(), config)
        async with _standby_liveness(liveness):
            await elector.acquire()
        hold = asyncio.create_task(elector.hold(stop))
    try:
        await kopf.operator(
            standalone=True,  # kopf's peering is not leader election; the Lease above is
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=liveness,
            memo=kopf.Memo(config=config),
            stop_flag=stop,
        )
    finally:
        if hold is not None:
            hold.cancel()
    return 1 if stop.is_set() else 0  # only a lost Lease sets it: exit so that the Deployment restarts us


def main() -> None:
    parser = argparse.ArgumentParser(prog="registry-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch this namespace, or a glob such as 'team-*' (repeatable; globs need RBAC to list namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING")
    parser.add_argument("--liveness", default=None, help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                        help="hold a Lease before acting, for more than one replica "
                             "(default: REGISTRY_OPERATOR_LEADER_ELECTION, else off)")
    args = parser.parse_args()

    configure_logging(args.log_level)
    try:
        config = config_.load(namespaces=args.namespace, leader_election=args.leader_elect)
    except config_.ConfigError as exc:
        parser.error(str(exc))
    assert handlers  # imported for its handler registrations
    allocator.limit_arenas()  # before asyncio starts its executor's threads
    sys.exit(asyncio.run(_run(config, args.liveness)))


if __name__ == "__main__":
    main()
