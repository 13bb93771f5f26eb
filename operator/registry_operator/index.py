"""A RegistryIndex seen from both sides: what a joined Registry takes from it, and what it publishes.

Pure functions over what `observe` read. A Registry that joins an index (`auth.indexRef`) trusts the
index's signing certificates and sends clients to its realm; while the index is missing, in another
namespace or not yet issued its keys, the Registry gets a `Degraded` reason that blocks writes, so it keeps
running on its last configuration and never loses authentication silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .material import Joined, Problem, Secrets
from .names import ChildNames, password_key
from .render import token as token_render
from .spec import IndexSpec, RegistrySpec, parse, parse_index

Obj = dict[str, Any]


def join(spec: RegistrySpec, index: Mapping[str, Any] | None, secrets: Secrets) -> Joined | Problem:
    """What Registry `spec` takes from its index (`index`: the RegistryIndex object, None when missing;
    `secrets`: the index's Secrets by name), or why it cannot join now."""
    name = spec.auth.index
    assert name is not None
    if spec.auth.index_namespace not in (None, spec.namespace):
        return Problem("IndexInOtherNamespace", f"auth.indexRef names namespace {spec.auth.index_namespace!r}: "
                                                f"a Registry joins a RegistryIndex of its own namespace only")
    if index is None:
        return Problem("IndexNotFound", f"RegistryIndex {name!r} does not exist in namespace {spec.namespace!r}; "
                                        "the registry keeps its last configuration and accepts no new tokens")
    try:
        index_spec = parse_index(name, spec.namespace, index.get("spec"))
    except (ValueError, KeyError, TypeError):
        return Problem("IndexNotReady", f"RegistryIndex {name!r} has an unusable spec (see its status)")
    names = ChildNames(name)
    trust = (secrets.get(names.token_signing) or {}).get("ca.crt")
    ca = (secrets.get(names.ca) or {}).get("ca.crt")
    if not trust or not ca:
        return Problem("IndexNotReady", f"RegistryIndex {name!r} has not issued its signing key yet")
    return Joined(index=name, realm=token_render.realm(index_spec), trust_pem=trust, ca_pem=ca)


def members(index: str, namespace: str, registries: Sequence[Mapping[str, Any]]) -> dict[str, RegistrySpec]:
    """The Registries (objects as listed) that joined `index`, by name; unparsable ones cannot have."""
    out = {}
    for body in registries:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = parse(meta["name"], namespace, body.get("spec"))
        except (ValueError, KeyError, TypeError):
            continue
        if spec.auth.mode == "token" and spec.auth.index == index:
            out[spec.name] = spec
    return out


def published(
    spec: IndexSpec, passwords: Mapping[str, str], joined: Mapping[str, RegistrySpec], unwatched: Sequence[str] = ()
) -> dict[str, Any]:
    """The index's status fields besides conditions: its Registries, where tokens come from, what to trust, and
    referenced password Secrets without the watch label (polled, see `references`)."""
    names = ChildNames(spec.name)
    keys = {user: password_key(user) for user in passwords if password_key(user) != user}
    return {
        "registries": [{"name": n, "endpoint": f"{n}.{r.namespace}.svc:{r.service.port}"}
                       for n, r in sorted(joined.items())],
        "registryCount": len(joined),
        "userCount": len(spec.auth.users),
        "tokenRealm": token_render.realm(spec),
        "caSecretName": names.ca,
        "caConfigMapName": names.ca,
        "credentialsSecretName": names.passwords if passwords else None,
        "passwordKeys": keys or None,
        "unwatchedSecrets": list(unwatched) or None,
    }
