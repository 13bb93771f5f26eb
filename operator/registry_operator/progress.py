"""Refreshing a Registry's status from its workloads alone, between full reconciles.

Once a new Registry's children are applied, its Deployment reports progress in several status updates of its
own (the controller takes it up, the ReplicaSet's pod starts, it becomes available). Each is a watch event of a
child that is not our write, and each used to cost a full reconcile: the Registry and a dozen children read,
material decided, everything rendered and compared. In a burst that made three full reconciles per Registry, and
most of the operator's CPU went to HTTP requests whose answers changed nothing. A Deployment's status, though,
feeds only status (Ready, Progressing, readyReplicas and the `verified` fingerprint), never what is rendered.

So a clean full reconcile of a Registry whose whole state lies in its own children (`verified.eligible`) keeps
what it computed status from (`Progress`), and a run whose triggers were all Deployment events reads the
Registry and its Deployments and computes status from those (`status`). It falls back to the full reconcile
whenever that might decide otherwise: the Registry's generation or annotations changed, or a Deployment is gone,
has a new generation (its spec changed), or no longer carries the labels, annotations (with the intent hash) and
owner we applied. Any other trigger (another child, a Secret, a retry, a timer, the resync) is a full reconcile.

Kept only while a rollout is under way (about 4 KiB per Registry, no object bodies, no Secret data): a settled
Registry keeps nothing, so a thousand of them cost no memory for this, and the rare Deployment event after its
rollout completed gets the full reconcile, as before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import verified
from .apply import contains
from .conditions import Rollout

Obj = dict[str, Any]
StatusOf = Callable[[Mapping[str, Obj | None], Mapping[str, Any] | None, dt.datetime], Obj]


@dataclass(frozen=True)
class Progress:
    """What a clean full reconcile computed status from, but the workloads' state."""

    generation: int  # the Registry's
    annotations: Mapping[str, str]  # the Registry's (a rotation or a garbage-collection request decides things)
    workloads: Mapping[str, tuple[int, Obj]]  # Deployment name -> (its generation, the metadata we applied)
    others: int  # `verified.combine` of every other child, as verified
    status_of: StatusOf  # (workloads, previous status, now) -> status, as the full reconcile computes it


def keep(
    body: Mapping[str, Any], live: Mapping[tuple[str, str], Obj | None], desired: list[Obj], workloads: list[str],
    status_of: StatusOf,
) -> Progress | None:
    """The Progress of a clean full reconcile (None when a workload was not stored, or every rollout is complete:
    nothing to refresh)."""
    meta = body["metadata"]
    if settled({name: live.get(("Deployment", name)) for name in workloads}):
        return None
    applied = {o["metadata"]["name"]: o["metadata"] for o in desired if o["kind"] == "Deployment"}
    kept: dict[str, tuple[int, Obj]] = {}
    for name in workloads:
        obj = live.get(("Deployment", name))
        if obj is None or name not in applied:
            return None
        ours = {k: applied[name][k] for k in ("labels", "annotations", "ownerReferences") if k in applied[name]}
        kept[name] = (obj["metadata"].get("generation", 0), ours)
    others = verified.combine({k: v for k, v in live.items() if not (k[0] == "Deployment" and k[1] in kept)},
                              meta["uid"])
    return Progress(meta.get("generation", 1), dict(meta.get("annotations") or {}), kept, others, status_of)


def light(kinds: Iterable[str]) -> bool:
    """Whether events of children of these kinds may need no more than `status` (a run's light trigger)."""
    return all(kind == "Deployment" for kind in kinds)


def settled(workloads: Mapping[str, Obj | None]) -> bool:
    """Every Deployment's rollout is complete: its status will not move on its own."""
    rollouts = [Rollout.of(obj) for obj in workloads.values()]
    return all(r is not None and r.complete for r in rollouts)


def status(
    progress: Progress, body: Mapping[str, Any], workloads: Mapping[str, Obj | None], stamp: str, now: dt.datetime
) -> Obj | None:
    """The Registry's status from its Deployments as just read, or None when a full reconcile must decide."""
    meta = body["metadata"]
    if meta.get("generation", 1) != progress.generation or (meta.get("annotations") or {}) != progress.annotations:
        return None
    for name, (generation, ours) in progress.workloads.items():
        live = workloads.get(name)
        if live is None or live["metadata"].get("generation") != generation or not contains(live["metadata"], ours):
            return None
    before = body.get("status") or {}
    out = progress.status_of(workloads, before, now)
    combined = progress.others ^ verified.combine({("Deployment", n): o for n, o in workloads.items()}, meta["uid"])
    fingerprint = verified.fingerprint(stamp, meta["uid"], progress.generation, combined)
    if {**before, verified.STATUS_FIELD: None} != {**out, verified.STATUS_FIELD: None}:
        out[verified.STATUS_FIELD] = fingerprint
    elif verified.STATUS_FIELD in before:
        # Status is unchanged but for the fingerprint: a Deployment's progress that changed no condition is not
        # worth a write of its own. The old fingerprint then no longer matches, so a restart reads this Registry
        # in full (where it would otherwise read it alone): correct, only slower.
        out[verified.STATUS_FIELD] = before[verified.STATUS_FIELD]
    return out
