"""The Secrets a Registry owns, rendered from decided material (no randomness here)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..material import RETENTION_KEY, Material
from ..names import COMPONENT_REGISTRY, COMPONENT_TOKEN, ChildNames, password_key
from ..pki import KeyPair
from ..spec import IndexSpec, RegistrySpec
from .common import Obj, secret

TLS_TYPE = "kubernetes.io/tls"


def render(spec: RegistrySpec | IndexSpec, material: Material, owner: Mapping[str, Any]) -> list[Obj]:
    names = ChildNames(spec.name)

    def opaque(name: str, data: Mapping[str, str | bytes], component: str = COMPONENT_REGISTRY) -> Obj:
        return secret(name, owner, component, data)

    def tls(name: str, pair: KeyPair, component: str = COMPONENT_REGISTRY, ca: bytes | None = None) -> Obj:
        data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, **({"ca.crt": ca} if ca else {})}
        return secret(name, owner, component, data, TLS_TYPE)

    private = {"secret": material.http_secret, "fingerprint-key": material.fingerprint_key}
    if material.passwords:  # the operator's copy: see material._generated
        private["generated-passwords"] = json.dumps(dict(material.passwords), sort_keys=True)
    if material.robot:
        private["robot"] = material.robot.dump()
    if material.retention_password:
        private[RETENTION_KEY] = material.retention_password
    out = [opaque(names.http_secret, private)]
    if spec.auth.mode != "none":
        # Pods mount only the `htpasswd` key; the fingerprints are the operator's.
        fingerprints = json.dumps(dict(material.fingerprints), sort_keys=True)
        out.append(opaque(names.htpasswd, {"htpasswd": material.htpasswd, "fingerprints": fingerprints}))
    if material.passwords:
        out.append(opaque(names.passwords, {password_key(u): p for u, p in material.passwords.items()}))
    if material.client_ca_pem:
        out.append(opaque(names.ca, {"ca.crt": material.client_ca_pem}))
    if material.ca:
        out.append(tls(names.ca_key, material.ca))
    if material.server:
        out.append(tls(names.tls, material.server, ca=material.server_ca_pem))
    if material.token_signing:
        # `ca.crt`: every signing certificate the registry accepts (the current one and, for a while, its
        # predecessor), so tokens signed just before a rotation stay valid.
        out.append(tls(names.token_signing, material.token_signing, COMPONENT_TOKEN, ca=material.token_trust_pem))
    if material.token_tls and material.ca:
        out.append(tls(names.token_tls, material.token_tls, COMPONENT_TOKEN, ca=material.ca.cert_pem))
    if material.upstream:  # spec.proxy with credentials or a CA (else `obsolete` removes it)
        out.append(opaque(names.upstream, material.upstream))
    return out
