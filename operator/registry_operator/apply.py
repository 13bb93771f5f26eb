"""Server-side apply of desired children: one field manager, `force=True`, and no write when nothing changed.

An object is skipped when the live one already carries the hash of this exact intent *and* still holds every
field we set. The hash catches fields we stopped sending (which only an apply removes); the field comparison
catches hand edits of fields we own, comparing quantities by value (the API server stores `1Gi` for `1024Mi`).
Everything else is applied: a deleted child is re-created, a hand-edited one is taken back. A settled
Registry therefore costs reads only.

`force=True` would take over any object that happens to have a child's name, so nothing is written unless
every existing object we would write is controlled by this Registry (its controller ownerReference carries
the Registry's UID): otherwise the Registry reports `NameConflict` and writes nothing at all.

Workloads go last: a Deployment is applied only after every Secret and ConfigMap it reads was stored, so a
refused write can never roll pods onto material that does not exist.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.types import CascadeType, PatchType

from . import metrics, quantity
from .echoes import Echoes
from .kinds import resource
from .material import Problem
from .names import APPLIED_HASH, FIELD_MANAGER, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY

Obj = dict[str, Any]
Key = tuple[str, str]  # (kind, name)

# Keys whose values are resource quantities, compared by value.
_QUANTITY_PARENTS = {"requests", "limits"}
_QUANTITY_KEYS = {"sizeLimit"}
# Lists of named items that server-side apply merges by key (listType map): an item another field manager
# added (a Service port or a sidecar added by hand) survives our apply, so it must not make the object look
# stale, or every resync would send an apply that changes nothing. Other lists (args, tolerations, and a
# NetworkPolicy's unnamed ports, which are atomic) are compared whole: an edit there is taken back.
_MERGED_LISTS = {"ports", "containers", "initContainers", "volumes", "volumeMounts", "env"}


def key(obj: Mapping[str, Any]) -> Key:
    return obj["kind"], obj["metadata"]["name"]


def with_intent_hash(obj: Obj) -> Obj:
    """A copy of `obj` annotated with the hash of its content (computed before the annotation is added)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
    return out


def _same_quantity(observed: Any, desired: Any) -> bool:
    a, b = quantity.parse(observed), quantity.parse(desired)
    return a is not None and a == b


def contains(observed: Any, desired: Any, _key: str | None = None, _parent: str | None = None) -> bool:
    """Whether every field in `desired` has the same value in `observed` (lists: same length, element-wise;
    merged lists: each desired item present)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            k in observed and contains(observed[k], v, k, _key) for k, v in desired.items()
        )
    if isinstance(desired, list) and _key in _MERGED_LISTS and all(isinstance(d, Mapping) and "name" in d
                                                                   for d in desired):
        return isinstance(observed, list) and _each_in(observed, desired)
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    if observed == desired:
        return True
    return (_key in _QUANTITY_KEYS or _parent in _QUANTITY_PARENTS) and _same_quantity(observed, desired)


def _each_in(observed: list[Any], desired: list[Any]) -> bool:
    """Every desired item contained in its own observed item, in any order and among others' items."""
    free = list(observed)
    for item in desired:
        match = next((i for i, o in enumerate(free) if contains(o, item)), None)
        if match is None:
            return False
        del free[match]
    return True


def up_to_date(desired: Obj, observed: Obj | None) -> bool:
    if observed is None:
        return False
    live_hash = (observed.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    return live_hash == desired["metadata"]["annotations"][APPLIED_HASH] and contains(observed, desired)


@dataclass
class Applied:
    """The outcome of one apply pass: what was written, the live objects after it, and failures.

    `problems` explain failures in status; `retry` lists those worth another attempt (throttling, conflicts,
    server errors, the network, missing permissions), as opposed to objects the API server rejected as
    invalid, which only a change of the inputs can fix.
    """

    written: list[Key] = field(default_factory=list)
    live: dict[Key, Obj] = field(default_factory=dict)
    failed: set[Key] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    # Intents the API server rejected as invalid: (intent hash, problem). Sent again only once they change,
    # so a Registry stuck on such input costs no requests at all.
    refused: dict[Key, tuple[str, Problem]] = field(default_factory=dict)


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("controller") and ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ())


def ours(kind: str, obj: Mapping[str, Any], registry: Mapping[str, Any]) -> bool:
    """Whether `obj` belongs to `registry`: controlled by its UID, or (a claim kept without an owner, see
    render/storage) labelled as its data and controlled by nobody else."""
    meta = registry["metadata"]
    if controlled_by(obj, meta["uid"]):
        return True
    if kind != "PersistentVolumeClaim":
        return False
    labels = obj["metadata"].get("labels") or {}
    controllers = [r for r in obj["metadata"].get("ownerReferences") or () if r.get("controller")]
    return not controllers and labels.get(LABEL_MANAGED_BY) == MANAGED_BY and labels.get(LABEL_INSTANCE) == meta["name"]


def conflicts(
    keys: Iterable[Key], observed: Mapping[Key, Obj | None], registry: Mapping[str, Any]
) -> list[Problem]:
    """A `NameConflict` for every existing object among `keys` that this Registry does not control."""
    out = []
    for kind, name in keys:
        live = observed.get((kind, name))
        if live is not None and not ours(kind, live, registry):
            out.append(Problem("NameConflict", f"{kind} {name!r} already exists and is not controlled by this "
                                               "Registry; delete or rename it (the operator will not take it over)"))
    return out


def _describe(obj: Mapping[str, Any], reason: str) -> str:
    return f"{obj['kind']} {obj['metadata']['name']!r}: {reason}"


_TYPED_PATCH = "failed to create typed patch object"
_QUOTA = "exceeded quota: "  # the ResourceQuota admission's 403, which is no missing permission


def _terminating(exc: ApiError) -> bool:
    causes = (exc.status.details.causes if exc.status.details else None) or ()
    return any(c.reason == "NamespaceTerminating" for c in causes)


def refused_for_good(exc: Exception) -> bool:
    """The API server judged the object itself invalid: sending the same object again cannot succeed.

    Server-side apply answers 500 when a field has the wrong type for the object's schema (for example
    spec.affinity, which the CRD passes through): that is invalid input too."""
    if not isinstance(exc, ApiError):
        return False
    code = exc.status.code
    return code in (400, 422) or (code == 500 and _TYPED_PATCH in (exc.status.message or ""))


def _failure(obj: Mapping[str, Any], exc: Exception) -> tuple[Problem, bool]:
    """(problem for status, whether retrying may help). Never quotes what was sent: for a Secret the API
    server's message could echo submitted values."""
    if isinstance(exc, ApiError):
        code, why = exc.status.code, exc.status.reason or ""
        detail = why if obj["kind"] == "Secret" else (exc.status.message or why)
        if refused_for_good(exc):
            return Problem("ApplyRefused", _describe(obj, f"the API server refused it: {detail}")), False
        if code == 403 and _terminating(exc):
            return Problem("NamespaceTerminating", _describe(obj, "its namespace is being deleted")), True
        quota = (exc.status.message or "").partition(_QUOTA)[2]
        if code == 403 and quota:  # the quota's own words (names and counts, never values): not RBAC
            return Problem("QuotaExceeded", _describe(obj, f"a ResourceQuota refuses it: {_QUOTA}{quota}")), True
        if code == 403:
            return Problem("Forbidden", _describe(obj, f"the operator may not write it: {detail}")), True
        return Problem("ApplyFailed", _describe(obj, f"{code} {detail}".strip())), True
    return Problem("ApplyFailed", _describe(obj, f"{type(exc).__name__}")), True


def _intent(obj: Obj) -> str:
    return obj["metadata"]["annotations"][APPLIED_HASH]


async def _apply(
    client: AsyncClient, obj: Obj, current: Obj | None, refused: tuple[str, Problem] | None, result: Applied,
    echoes: Echoes,
) -> None:
    k = key(obj)
    if up_to_date(obj, current):
        assert current is not None
        result.live[k] = current
        return
    if refused is not None and refused[0] == _intent(obj):
        result.failed.add(k)
        result.problems.append(refused[1])
        result.refused[k] = refused
        if current is not None:
            result.live[k] = current
        return
    metrics.API_WRITES.labels(obj["kind"], "apply").inc()
    echoes.sending(k)
    try:
        live = await client.patch(
            resource(obj["apiVersion"], obj["kind"]),
            obj["metadata"]["name"],
            obj,
            namespace=obj["metadata"]["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )
    except (ApiError, httpx2.HTTPError) as exc:
        echoes.sent(k, None)
        problem, retry = _failure(obj, exc)
        result.failed.add(k)
        result.problems.append(problem)
        if retry:
            result.retry.append(problem.message)
        else:
            result.refused[k] = (_intent(obj), problem)
        if current is not None:
            result.live[k] = current
        return
    result.written.append(k)
    result.live[k] = live.to_dict()
    echoes.sent(k, result.live[k]["metadata"]["resourceVersion"])  # at once: its watch event may be next


async def apply_all(
    client: AsyncClient,
    desired: Sequence[Obj],
    observed: Mapping[Key, Obj | None],
    registry: Mapping[str, Any],
    refused: Mapping[Key, tuple[str, Problem]] | None = None,
    echoes: Echoes | None = None,
) -> Applied:
    """Apply what changed: everything but the workloads at once, then the workloads if all of that was stored.

    Nothing else here depends on creation order, and one round trip instead of a dozen is most of a new
    Registry's convergence time. `refused`: what an earlier pass was refused (`Applied.refused`). `echoes`
    hears of each write as it is sent and answered, so that its watch event is known as ours (see `echoes`).
    """
    refused = refused or {}
    echoes = Echoes() if echoes is None else echoes
    result = Applied()
    result.problems = conflicts([key(obj) for obj in desired], observed, registry)
    if result.problems:
        return result
    intents = [with_intent_hash(obj) for obj in desired]
    first = [obj for obj in intents if obj["kind"] != "Deployment"]
    workloads = [obj for obj in intents if obj["kind"] == "Deployment"]
    await asyncio.gather(
        *(_apply(client, obj, observed.get(key(obj)), refused.get(key(obj)), result, echoes) for obj in first))
    if result.failed:
        for obj in workloads:  # keep what runs; status reports the failures above
            live = observed.get(key(obj))
            if live is not None:
                result.live[key(obj)] = live
    else:
        await asyncio.gather(
            *(_apply(client, obj, observed.get(key(obj)), refused.get(key(obj)), result, echoes)
              for obj in workloads))
    order = {key(obj): i for i, obj in enumerate(intents)}
    result.written.sort(key=order.__getitem__)
    # The writes answer in any order: sorted, the same failures make the same status and the same log line,
    # so a retry that fails alike writes nothing and says nothing again.
    result.problems.sort(key=lambda p: (p.reason, p.message))
    result.retry.sort()
    return result


async def delete_all(
    client: AsyncClient,
    doomed: Sequence[tuple[str, str, str]],
    observed: Mapping[Key, Obj | None],
    registry: Mapping[str, Any],
) -> list[Key]:
    """Delete the children in `doomed` that exist and are this Registry's (a missing one costs no request)."""
    deleted = []
    for api_version, kind, name in doomed:
        current = observed.get((kind, name))
        if current is None or not ours(kind, current, registry):
            continue
        metrics.API_WRITES.labels(kind, "delete").inc()
        try:
            # Background: the API's default for a Job orphans its pods.
            await client.delete(resource(api_version, kind), name, namespace=registry["metadata"]["namespace"],
                                cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        deleted.append((kind, name))
    return deleted
