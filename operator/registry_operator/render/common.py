"""Pieces every renderer shares: metadata with labels and the owner reference, and Secret encoding."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from .. import names

Obj = dict[str, Any]


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    """A controller reference to the Registry (or RegistryIndex): garbage collection deletes the child with it."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": owner.get("kind") or names.KIND,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str,
    owner: Mapping[str, Any],
    component: str,
    annotations: Mapping[str, str] | None = None,
    owned: bool = True,
) -> Obj:
    """Metadata of a child; `owned=False` leaves out the owner reference (a kept PersistentVolumeClaim)."""
    meta: Obj = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": names.labels(owner["metadata"]["name"], component),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owned:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def secret(
    name: str, owner: Mapping[str, Any], component: str, data: Mapping[str, str | bytes], type_: str = "Opaque"
) -> Obj:
    # `data`, not `stringData`: the API server turns stringData into data, so it would never compare equal.
    meta = metadata(name, owner, component)
    meta["labels"][names.LABEL_WATCH] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": type_,
        "data": {key: b64(value) for key, value in data.items()},
    }
