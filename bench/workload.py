"""What the benchmarks create: Registries for the operator, and the floor's bare-client equivalent.

The floor does exactly the API work the operator's first reconcile must do, with no kopf and no operator
logic around it: create the Registry, decide material and render with the operator's own functions
(`material.decide`, `render.desired`, `apply.with_intent_hash`: byte-identical objects), server-side-apply
them all at once (the fastest a bare client can; creation order does not matter to the API server), then wait
for the Deployment to become available through kwok.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import time
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount
from lightkube.types import PatchType

from registry_operator import material, render
from registry_operator.apply import with_intent_hash
from registry_operator.kinds import Registry, resource
from registry_operator.spec import parse

from .observe import Key

SPEC: dict[str, Any] = {"auth": {"users": [{"name": "alice"}]}}  # htpasswd, SelfSigned TLS: the defaults
OPERATOR_IMAGE = "registry-operator:0.1.0"
FLOOR_MANAGER = "bench-floor"


def decide(spec: Any) -> material.Material:
    """`material.decide` for a Registry with nothing yet (older operators also take a bcrypt `Verifier`)."""
    if "verifier" in inspect.signature(material.decide).parameters:
        from registry_operator.htpasswd import Verifier  # type: ignore[attr-defined]

        return material.decide(spec, {}, Verifier())  # type: ignore[call-arg]
    return material.decide(spec, {})


def admin_client(kubeconfig: str) -> AsyncClient:
    return AsyncClient(KubeConfig.from_file(kubeconfig), field_manager=FLOOR_MANAGER, timeout=httpx2.Timeout(120))


def _child_suffixes() -> list[tuple[str, str]]:
    """(kind, name suffix) of every child of a `SPEC` Registry: rendered once for a template name."""
    owner = {"metadata": {"name": "tmpl", "namespace": "ns", "uid": "0"}}
    spec = parse("tmpl", "ns", SPEC)
    mat = decide(spec)
    return [(o["kind"], o["metadata"]["name"][len("tmpl") :]) for o in render.desired(spec, mat, owner, OPERATOR_IMAGE)]


_SUFFIXES: list[tuple[str, str]] | None = None


def children(name: str) -> list[Key]:
    global _SUFFIXES
    if _SUFFIXES is None:
        _SUFFIXES = _child_suffixes()
    return [(kind, name + suffix) for kind, suffix in _SUFFIXES]


async def ensure_namespace(client: AsyncClient, name: str, timeout: float = 60) -> None:
    """Create `name` and wait for its default ServiceAccount (pods are refused without it)."""
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=name)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.get(ServiceAccount, "default", namespace=name)
            return
        except ApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def unrelated_secrets(client: AsyncClient, namespace: str, n: int, batch: int = 100) -> None:
    """`n` Secrets of about 3 KiB (the size of a TLS pair) that no Registry refers to."""
    await ensure_namespace(client, namespace)
    payload = base64.b64encode(os.urandom(2048)).decode()
    for start in range(0, n, batch):
        await asyncio.gather(*(
            client.create(Secret(metadata=ObjectMeta(name=f"other-{i}", namespace=namespace),
                                 type="kubernetes.io/tls", data={"tls.crt": payload, "tls.key": payload[:1700]}))
            for i in range(start, min(n, start + batch))
        ))  # fmt: skip


async def create_registry(client: AsyncClient, namespace: str, name: str) -> dict[str, Any]:
    """Create the Registry (again after a failure that may pass; a 409 then means an earlier try got through,
    the benchmark's namespaces being fresh)."""
    async def once() -> dict[str, Any]:
        try:
            obj = await client.create(Registry(metadata=ObjectMeta(name=name, namespace=namespace), spec=dict(SPEC)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            obj = await client.get(Registry, name, namespace=namespace)
        return obj.to_dict()

    return await _retrying(once)


async def floor_one(client: AsyncClient, namespace: str, name: str) -> None:
    """Everything the operator's first reconcile writes, done by a bare client."""
    body = await create_registry(client, namespace, name)
    spec = parse(name, namespace, body.get("spec"))
    mat = await asyncio.to_thread(decide, spec)
    intents = [with_intent_hash(obj) for obj in render.desired(spec, mat, body, OPERATOR_IMAGE)]
    await asyncio.gather(*(
        _retrying(lambda obj=obj: client.patch(
            resource(obj["apiVersion"], obj["kind"]), obj["metadata"]["name"], obj, namespace=namespace,
            patch_type=PatchType.APPLY, field_manager=FLOOR_MANAGER, force=True,
        ))
        for obj in intents
    ))  # fmt: skip


def _may_pass(exc: Exception) -> bool:
    """A dropped connection (a busy API server closes idle keep-alives), throttling, or a server error such as
    the 504 an overloaded API server answers when a write outlives its request timeout."""
    return isinstance(exc, httpx2.TransportError) or (
        isinstance(exc, ApiError) and (exc.status.code == 429 or (exc.status.code or 0) >= 500))


async def _retrying(what: Any, attempts: int = 5) -> Any:
    """Await `what()`, again after a failure that may pass (the operator retries those too)."""
    for attempt in range(attempts):
        try:
            return await what()
        except (httpx2.TransportError, ApiError) as exc:
            if attempt == attempts - 1 or not _may_pass(exc):
                raise
            await asyncio.sleep(1 + attempt)


async def count(client: AsyncClient, res: Any, namespace: str) -> int:
    async def once() -> int:
        n = 0
        async for _ in client.list(res, namespace=namespace):
            n += 1
        return n

    return await _retrying(once)


async def delete_registries(client: AsyncClient, namespace: str, wait_pods: bool = True, timeout: float = 300) -> None:
    """Delete every Registry of `namespace`; wait until they are gone and (optionally) GC removed their pods."""
    await client.deletecollection(Registry, namespace=namespace)
    deadline = time.monotonic() + timeout
    while await count(client, Registry, namespace) or (wait_pods and await count(client, Pod, namespace)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}: Registries or their pods still there after {timeout}s")
        await asyncio.sleep(0.5)
