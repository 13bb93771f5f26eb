"""The node agent's loop: the node-trust ConfigMaps of its namespace -> containerd's certs.d on this node.

List, then watch from the list's resourceVersion; every change re-plans the whole directory from what is
known (a handful of ConfigMaps), so a missed step can never leave a file behind, and so does a periodic resync
(files removed or edited on the node come back). Any failure (the watch expired, the API server went away, a
file could not be written) starts over with a fresh list a few seconds later; until the first list nothing is
written or removed. It reads only ConfigMaps carrying `LABEL_NODE_TRUST_OF` in its own namespace and writes only below
`certs_dir`.
"""

from __future__ import annotations

import logging
import threading
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


class Agent:
    """What the agent knows (the ConfigMaps, once listed) and what it already said, shared by the watch loop and
    the periodic resync that puts back files someone removed or changed on the node."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = certs_dir
        self.known: dict[str, Mapping[str, Any]] | None = None  # name -> ConfigMap; None until the first list
        self.lock = threading.Lock()
        self.said: set[str] = set()  # warnings of the last pass: each is logged once, not at every sync

    def sync(self) -> files.Plan:
        """Make certs.d say what the known ConfigMaps publish; returns what was changed."""
        with self.lock:
            if self.known is None:  # never listed: an empty directory would be a guess, not the truth
                return files.Plan()
            want, problems = files.desired(self.known.values())
            changes = files.plan(want, files.read(self.certs_dir))
            notes = problems + [f"{self.certs_dir / host}: the directory exists and was not made by this agent; "
                                "left alone" for host in changes.foreign]
            for note in notes:
                if note not in self.said:
                    log.warning("%s", note)
            self.said = set(notes)
            files.apply(self.certs_dir, changes)
        if changes:
            log.info("certs.d: wrote %s, removed %s", sorted(changes.write) or "nothing", changes.remove or "nothing")
        return changes

    def resync_forever(self, seconds: float) -> None:
        while True:
            time.sleep(seconds)
            try:
                self.sync()
            except OSError as exc:
                log.warning("resync of %s failed: %s", self.certs_dir, exc)


def run(
    client: Client, namespace: str, certs_dir: Path, resync_seconds: float, stop: Callable[[], bool] = lambda: False
) -> None:
    """Keep `certs_dir` in step with the ConfigMaps until `stop()` says so (checked between events), and
    every `resync_seconds` even without an event."""
    labels = {LABEL_NODE_TRUST_OF: exists()}
    agent = Agent(certs_dir)
    threading.Thread(target=agent.resync_forever, args=(resync_seconds,), daemon=True).start()
    while not stop():
        try:
            listed = client.list(ConfigMap, namespace=namespace, labels=labels)
            known = {cm.metadata.name: cm.to_dict() for cm in listed}
            with agent.lock:
                agent.known = known
            agent.sync()
            for kind, cm in client.watch(ConfigMap, namespace=namespace, labels=labels,
                                         resource_version=listed.resourceVersion):
                with agent.lock:
                    if kind == "DELETED":
                        known.pop(cm.metadata.name, None)
                    else:
                        known[cm.metadata.name] = cm.to_dict()
                agent.sync()
                if stop():
                    return
        except (ApiError, httpx2.HTTPError, OSError) as exc:
            log.warning("starting over in %.0f s: %s", RESTART_SECONDS, exc)
            time.sleep(RESTART_SECONDS)
