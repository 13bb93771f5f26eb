"""Node agent for spec.nodeTrust: keeps containerd's certs.d in step with the node-trust ConfigMaps.

Run as ``python -m registry_operator.nodetrust`` in a DaemonSet (manifests/node-trust/), with certs.d mounted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lightkube import Client

from .agent import run

CERTS_DIR = "/etc/containerd/certs.d"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-node-trust", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                        help="where the ConfigMaps are (default: POD_NAMESPACE)")
    parser.add_argument("--certs-dir", default=CERTS_DIR, type=Path,
                        help=f"containerd's registry config_path (default {CERTS_DIR})")
    parser.add_argument("--resync-seconds", default=300.0, type=float,
                        help="re-check the directory this often without an event (default 300)")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.namespace:
        parser.error("--namespace or POD_NAMESPACE is required")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if not args.certs_dir.is_dir():  # the hostPath is mounted as Directory: its absence is a setup error
        logging.getLogger(__name__).error("%s is not a directory: is containerd's config_path mounted?",
                                          args.certs_dir)
        return 1
    run(Client(), args.namespace, args.certs_dir, args.resync_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
