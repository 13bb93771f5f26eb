"""Token service for the registry's ``auth.mode: token``: issues registry bearer tokens.

Run as ``registry-token-service`` or ``python -m registry_operator.token``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .config import CONFIG_PATH
from .server import serve


def main(argv: list[str] | None = None) -> int:
    """Console script ``registry-token-service``; exits non-zero if the start-up files are unusable."""
    parser = argparse.ArgumentParser(prog="registry-token-service", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=CONFIG_PATH, help=f"JSON config file (default {CONFIG_PATH})")
    parser.add_argument("--listen", help="HOST:PORT, overrides the config's listen address")
    parser.add_argument("--metrics-listen", help="HOST:PORT, overrides the config's metricsListen address")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args.config, args.listen, args.metrics_listen))
    except (OSError, ValueError) as exc:
        logging.getLogger("registry_operator.token").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
