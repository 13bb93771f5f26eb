"""What the first reconcile after a restart may take as verified without reading every child again.

A restart reconciles every Registry, and a full reconcile reads the Registry and about a dozen children and
Secrets: at a thousand Registries that was 12,000 GETs and about a minute. Yet at start the operator lists all
of those objects anyway (`watches`: metadata only, in pages), and almost all of them are exactly as the last
reconcile left them. So a clean reconcile puts in status a fingerprint of what it verified: the operator's own
code and settings, the Registry's UID and generation, and the resourceVersion of every child it controls. The
API server gives an object a new resourceVersion on every change, so children listed at start under the same
versions are the same objects, unchanged, and the first reconcile after a restart then reads the Registry alone.
Any difference (a child edited, deleted or added while the operator was away, a new operator build, a new
setting) means a full reconcile, as before.

Deferred to the periodic resync, which is always a full reconcile (hourly by default): decisions the clock alone
makes, months ahead (a certificate entering its renewal window; an old CA leaving the trust bundle after its
overlap). Registries whose state lies partly outside their own children always take the full path: pull Secrets
in other namespaces, node trust, a cache's upstream, Redis, a joined index, garbage collection, Secrets of the
user, a ServiceAccount the pods need, and PodMonitors (which are not watched).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightkube.models.meta_v1 import ObjectMeta

from . import garbage_collection, names
from .config import Config
from .kinds import FOLLOWED_KINDS
from .observe import referenced_secrets
from .spec import RegistrySpec

log = logging.getLogger(__name__)

# How long a reconcile waits for the listings at start before it reads everything itself (then no one waits).
LISTING_WAIT_SECONDS = 60.0
STATUS_FIELD = "childrenFingerprint"


def stamp(config: Config) -> str:
    """The operator's code and the settings that shape what a reconcile renders and decides (not those of the
    process, such as its identity or ports): what renders children must be what verified them."""
    shaping = (config.operator_image, config.cluster_domain, config.allowed_images, config.pull_secret_namespaces,
               config.node_trust_namespace, config.pull_rotation_seconds)
    digest = hashlib.blake2b(repr(shaping).encode(), digest_size=16)
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def followed(kind: str, labels: Mapping[str, str]) -> bool:
    """Whether `watches` lists such an object at start: children of the followed kinds labelled as ours, and
    Secrets with the watch label."""
    if kind == "Secret":
        return labels.get(names.LABEL_WATCH) == "true"
    return kind in FOLLOWED_KINDS and labels.get(names.LABEL_MANAGED_BY) == names.MANAGED_BY


def _digest(kind: str, name: str, version: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{kind}/{name}/{version}".encode(), digest_size=16).digest(), "big")


def _controller(owners: Iterable[Any]) -> str | None:
    return next((ref.uid for ref in owners if ref.controller), None)


def combine(children: Mapping[tuple[str, str], Mapping[str, Any] | None], uid: str) -> int:
    """The children of the Registry with `uid` that a listing at start would show, folded into one number
    (XOR: the order objects arrive in does not matter)."""
    out = 0
    for (kind, name), obj in children.items():
        meta = (obj or {}).get("metadata") or {}
        if not obj or not followed(kind, meta.get("labels") or {}):
            continue
        if any(ref.get("controller") and ref.get("uid") == uid for ref in meta.get("ownerReferences") or ()):
            out ^= _digest(kind, name, meta["resourceVersion"])
    return out


def fingerprint(stamp_: str, uid: str, generation: int, combined: int) -> str:
    return hashlib.blake2b(f"{stamp_}/{uid}/{generation}/{combined:032x}".encode(), digest_size=12).hexdigest()


def eligible(spec: RegistrySpec, annotations: Mapping[str, str] | None, status: Mapping[str, Any] | None,
             pod_monitors: bool) -> bool:
    """Whether everything a reconcile of this Registry checks lies in its own listed children (see above)."""
    return not (
        pod_monitors or spec.auth.index is not None or spec.pull_secrets is not None or spec.node_trust
        or spec.proxy is not None or spec.redis is not None or spec.garbage_collection.schedule is not None
        or garbage_collection.pending_request(annotations, status) or referenced_secrets(spec)
        or (spec.storage.s3 is not None and spec.storage.s3.service_account is not None)
    )


class Listing:
    """Children listed at start, folded per controlling UID until the first reconcile of their owner takes them.

    An event of a child after its listing spoils its owner's entry (the fold no longer describes the child). Kept
    only until taken: a few bytes per Registry, never per object."""

    def __init__(self) -> None:
        self._pending = 0  # listings at start not finished yet
        self._folded: dict[str, int | None] = {}  # controller UID -> combined digests, None: spoiled
        self.complete = asyncio.Event()

    def expect(self, listings: int) -> None:
        """How many listings at start to wait for (none: nothing to wait for)."""
        self._pending = listings
        if listings <= 0:
            self.complete.set()

    def listed(self, kind: str, meta: ObjectMeta) -> None:
        if self.complete.is_set():  # a listing after a gap, or after this one was given up on
            return
        uid = _controller(meta.ownerReferences or ())
        if uid is None or not followed(kind, meta.labels or {}) or uid in self._folded and self._folded[uid] is None:
            return
        self._folded[uid] = (self._folded.get(uid) or 0) ^ _digest(kind, meta.name or "", meta.resourceVersion or "")

    def changed(self, meta: ObjectMeta) -> None:
        uid = _controller(meta.ownerReferences or ())
        if uid is None:
            return
        if self.complete.is_set():
            self._folded.pop(uid, None)
        else:
            self._folded[uid] = None

    def finished(self) -> None:
        """One listing at start is done."""
        self._pending -= 1
        if self._pending <= 0:
            self.complete.set()

    async def take(self, uid: str) -> int | None:
        """The fold for this owner, once (None: none, spoiled, or taken). Waits for the listings at start."""
        if not self.complete.is_set():
            try:
                await asyncio.wait_for(self.complete.wait(), LISTING_WAIT_SECONDS)
            except TimeoutError:
                if not self.complete.is_set():
                    log.info("the listings at start took over %.0f s: reconciles read everything", LISTING_WAIT_SECONDS)
                    self._folded.clear()
                    self.complete.set()
        return self._folded.pop(uid, None)
