"""The registry's PersistentVolumeClaim.

Image data outlives mistakes: by default the claim has no owner reference, so deleting the Registry keeps it
(and a Registry re-created with the same name picks it up again). `reclaimPolicy: Delete` opts into garbage
collection with the Registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..names import COMPONENT_REGISTRY, ChildNames
from ..spec import RegistrySpec
from .common import Obj, metadata


def claim(spec: RegistrySpec, owner: Mapping[str, Any]) -> Obj | None:
    if spec.storage.claim is None:
        return None
    c = spec.storage.claim
    body: Obj = {
        "accessModes": list(c.access_modes),
        "resources": {"requests": {"storage": c.size}},
    }
    if c.storage_class is not None:
        body["storageClassName"] = c.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(
            ChildNames(spec.name).claim, owner, COMPONENT_REGISTRY, owned=c.reclaim_policy == "Delete"
        ),
        "spec": body,
    }
