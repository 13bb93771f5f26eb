"""The node agent's loop: the node-trust ConfigMaps of its namespace -> containerd's certs.d on this node.

List, then watch from the list's resourceVersion; every change re-plans the whole directory from what is
known (a handful of ConfigMaps), so a missed step can never leave a file behind. Any failure (the watch
expired, the API server went away, a file could not be written) starts over with a fresh list a few seconds
later. It reads only ConfigMaps carrying `LABEL_NODE_TRUST_OF` in its own namespace and writes only below
`certs_dir`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, Client
from lightkube.operators import exists
from lightkube.resources.core_v1 import ConfigMap

from ..names import LABEL_NODE_TRUST_OF
from . import files

log = logging.getLogger(__name__)
RESTART_SECONDS = 3.0  # after a failure, before listing again


def sync(certs_dir: Path, config_maps: Mapping[str, Mapping[str, Any]]) -> files.Plan:
    """Make `certs_dir` say what `config_maps` (name -> ConfigMap) publish; returns what was changed."""
    want, problems = files.desired(config_maps.values())
    for problem in problems:
        log.warning("%s", problem)
    changes = files.plan(want, files.read(certs_dir))
    for host in changes.foreign:
        log.warning("%s: the directory exists and was not made by this agent; left alone", certs_dir / host)
    files.apply(certs_dir, changes)
    if changes:
        log.info("certs.d: wrote %s, removed %s", sorted(changes.write) or "nothing", changes.remove or "nothing")
    return changes


def run(client: Client, namespace: str, certs_dir: Path, stop: Callable[[], bool] = lambda: False) -> None:
    """Keep `certs_dir` in step with the ConfigMaps until `stop()` says so (checked between events)."""
    labels = {LABEL_NODE_TRUST_OF: exists()}
    while not stop():
        try:
            listed = client.list(ConfigMap, namespace=namespace, labels=labels)
            known = {cm.metadata.name: cm.to_dict() for cm in listed}
            sync(certs_dir, known)
            for kind, cm in client.watch(ConfigMap, namespace=namespace, labels=labels,
                                         resource_version=listed.resourceVersion):
                if kind == "DELETED":
                    known.pop(cm.metadata.name, None)
                else:
                    known[cm.metadata.name] = cm.to_dict()
                sync(certs_dir, known)
                if stop():
                    return
        except (ApiError, httpx2.HTTPError, OSError) as exc:
            log.warning("starting over in %.0f s: %s", RESTART_SECONDS, exc)
            time.sleep(RESTART_SECONDS)
