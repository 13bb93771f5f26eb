"""One level-based, idempotent reconcile of one Registry: the pipeline from `architecture.md`.

    read Registry -> spec -> observe -> material -> render -> apply -> conditions -> status (only if changed)

Only `observe`, `apply` and the status write touch the cluster; everything between is pure. Calling this any
number of times for a settled Registry performs reads only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from . import conditions, events, material, pki, render
from .apply import Key, apply_all, delete_all
from .kinds import Registry
from .names import ChildNames
from .observe import observe
from .render import token as token_render
from .spec import RegistrySpec, parse

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every reconcile shares for the life of the operator process."""

    client: AsyncClient
    operator_image: str
    cluster_domain: str = "cluster.local"


@dataclass
class Outcome:
    written: list[Key] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    status_written: bool = False


def _published(spec: RegistrySpec, mat: material.Material) -> dict[str, Any]:
    """What clients need to find and trust the registry, for status."""
    names = ChildNames(spec.name)
    return {
        "endpoint": f"{names.service}.{spec.namespace}.svc:{spec.service.port}",
        "caSecretName": names.ca if mat.client_ca_pem else None,
        "credentialsSecretName": names.passwords if mat.passwords else None,
        "certificateNotAfter": (
            pki.not_after(mat.serving_cert_pem).strftime("%Y-%m-%dT%H:%M:%SZ") if mat.serving_cert_pem else None
        ),
        "tokenRealm": token_render.realm(spec) if spec.auth.mode == "token" else None,
    }


async def _write_status(ctx: Context, body: Mapping[str, Any], status: dict[str, Any]) -> bool:
    old = body.get("status") or {}
    if old == status:
        return False
    # A merge patch: keys we no longer publish are nulled explicitly.
    patch = {"status": {**{k: None for k in old if k not in status}, **status}}
    meta = body["metadata"]
    await ctx.client.patch(
        Registry.Status, meta["name"], patch, namespace=meta["namespace"], patch_type=PatchType.MERGE
    )
    return True


async def reconcile(ctx: Context, namespace: str, name: str) -> Outcome:
    outcome = Outcome()
    try:
        body = (await ctx.client.get(Registry, name, namespace=namespace)).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return outcome  # deleted: garbage collection removes the children
        raise
    if body["metadata"].get("deletionTimestamp"):
        return outcome
    generation = body["metadata"].get("generation", 1)
    now = dt.datetime.now(dt.UTC)

    try:
        spec = parse(name, namespace, body.get("spec"))
    except (ValueError, KeyError, TypeError) as exc:
        problem = material.Problem("InvalidSpec", f"the spec cannot be used: {exc}")
        status = conditions.compute(
            parse(name, namespace, {}), generation, [problem], {}, {}, body.get("status"), now)
        outcome.status_written = await _finish(ctx, body, status)
        return outcome

    observed = await observe(ctx.client, spec, token_was_on="tokenRealm" in (body.get("status") or {}))
    # Key generation and bcrypt are CPU work: keep them off the event loop that serves every Registry.
    mat = await asyncio.to_thread(material.decide, spec, observed.secrets, ctx.cluster_domain)
    desired = render.desired(spec, mat, body, ctx.operator_image)
    applied = await apply_all(ctx.client, desired, observed.children)
    outcome.written = applied.written
    outcome.deleted = await delete_all(ctx.client, render.obsolete(spec), namespace, observed.children)

    names = ChildNames(spec.name)
    workload_names = [names.deployment] + ([names.token] if spec.auth.mode == "token" else [])
    workloads = {n: applied.live.get(("Deployment", n)) for n in workload_names}
    status = conditions.compute(
        spec, generation, [*mat.problems, *applied.problems], workloads, _published(spec, mat),
        body.get("status"), now,
    )
    outcome.status_written = await _finish(ctx, body, status)
    if outcome.written or outcome.deleted:
        log.info("Registry %s/%s: applied %s, deleted %s", namespace, name, outcome.written, outcome.deleted)
    log.debug("Registry %s/%s reconciled: %d applied, %d deleted, status %s", namespace, name,
              len(outcome.written), len(outcome.deleted), "written" if outcome.status_written else "unchanged")
    return outcome


async def _finish(ctx: Context, body: Mapping[str, Any], status: dict[str, Any]) -> bool:
    written = await _write_status(ctx, body, status)
    for type_, reason, message in conditions.transitions(body.get("status"), status):
        await events.post(ctx.client, body, type_, reason, message)
    return written
