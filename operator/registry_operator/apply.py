"""Server-side apply of desired children: one field manager, `force=True`, and no write when nothing changed.

An object is skipped when the live one already carries the hash of this exact intent *and* still holds every
field we set. The hash catches fields we stopped sending (which only an apply removes); the field comparison
catches hand edits of fields we own. Everything else is applied: a deleted child is re-created, a hand-edited
one is taken back. A settled Registry therefore costs reads only.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from .kinds import resource
from .material import Problem
from .names import APPLIED_HASH, FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY

Obj = dict[str, Any]
Key = tuple[str, str]  # (kind, name)


def key(obj: Mapping[str, Any]) -> Key:
    return obj["kind"], obj["metadata"]["name"]


def with_intent_hash(obj: Obj) -> Obj:
    """A copy of `obj` annotated with the hash of its content (computed before the annotation is added)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
    return out


def contains(observed: Any, desired: Any) -> bool:
    """Whether every field in `desired` has the same value in `observed` (lists: same length, element-wise)."""
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            k in observed and contains(observed[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return observed == desired


def up_to_date(desired: Obj, observed: Obj | None) -> bool:
    if observed is None:
        return False
    live_hash = (observed.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    return live_hash == desired["metadata"]["annotations"][APPLIED_HASH] and contains(observed, desired)


@dataclass
class Applied:
    """The outcome of one apply pass: what was written, the live objects after it, and failures."""

    written: list[Key] = field(default_factory=list)
    live: dict[Key, Obj] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _describe(obj: Mapping[str, Any], exc: ApiError) -> str:
    # The API server can echo submitted values in its messages; for Secrets say only what failed.
    where = f"{obj['kind']} {obj['metadata']['name']!r}"
    if obj["kind"] == "Secret":
        return f"{where}: the API server refused it ({exc.status.reason or exc.status.code})"
    return f"{where}: {exc.status.message}"


async def _apply(client: AsyncClient, obj: Obj, current: Obj | None, result: Applied) -> None:
    k = key(obj)
    if up_to_date(obj, current):
        assert current is not None
        result.live[k] = current
        return
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
    except ApiError as exc:
        result.problems.append(Problem("ApplyFailed", _describe(obj, exc)))
        return
    result.written.append(k)
    result.live[k] = live.to_dict()


async def apply_all(client: AsyncClient, desired: Sequence[Obj], observed: Mapping[Key, Obj | None]) -> Applied:
    """Apply what changed, all at once: nothing here depends on creation order (a pod simply waits for
    its Secrets), and one round trip instead of a dozen is most of a new Registry's convergence time."""
    result = Applied()
    intents = [with_intent_hash(obj) for obj in desired]
    await asyncio.gather(*(_apply(client, obj, observed.get(key(obj)), result) for obj in intents))
    order = {key(obj): i for i, obj in enumerate(intents)}
    result.written.sort(key=order.__getitem__)
    return result


async def delete_all(
    client: AsyncClient, doomed: Sequence[tuple[str, str, str]], namespace: str, observed: Mapping[Key, Obj | None]
) -> list[Key]:
    """Delete the children in `doomed` that exist and are ours (a missing one costs no request)."""
    deleted = []
    for api_version, kind, name in doomed:
        current = observed.get((kind, name))
        if current is None or (current["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
            continue
        try:
            await client.delete(resource(api_version, kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        deleted.append((kind, name))
    return deleted
