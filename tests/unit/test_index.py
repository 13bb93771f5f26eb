"""RegistryIndex, pure: its rendered token service, what a joined Registry takes from it, its status fields,
and signing-key rotation reaching every joined Registry with an overlap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import crdgen
import yaml
from builders import OWNER, by_key, decode_secrets

from registry_operator import conditions, index, material, pki, render, spec
from registry_operator.material import Joined, Problem
from registry_operator.observe import index_candidates

INDEX_OWNER = {"apiVersion": "registry.operator.dev/v1alpha1", "kind": "RegistryIndex",
               "metadata": {"name": "idx", "namespace": "ns", "uid": "2222"}}
INDEX_SPEC = {
    "users": [{"name": "alice"}, {"name": "ci"}],
    "groups": [{"name": "devs", "users": ["alice"]}],
    "access": [
        {"users": ["ci"], "registries": ["prod"], "repositories": ["*"], "actions": ["pull", "push"]},
        {"groups": ["devs"], "registries": ["dev"], "repositories": ["*"], "actions": ["pull", "push"]},
        {"users": ["alice", "ci"], "repositories": ["*"], "actions": ["pull"]},
    ],
    "tls": {"dnsNames": ["localhost"]},
}
JOINED = {"version": "3", "auth": {"mode": "token", "indexRef": {"name": "idx"}}}


def index_objects(raw: dict[str, Any] = INDEX_SPEC, observed: dict[str, Any] | None = None,
                  joined: tuple[str, ...] = ("dev", "prod")) -> tuple[material.Material, list[dict[str, Any]]]:
    s = spec.parse_index("idx", "ns", raw)
    mat = material.decide_index(s, observed or {})
    return mat, render.index_desired(s, mat, INDEX_OWNER, "registry-operator:test", list(joined))


def joined_from(mat: material.Material) -> Joined:
    """What `index.join` takes from the index's Secrets, straight from its material."""
    return Joined("idx", "https://idx-token.ns.svc:5001/token", mat.token_trust_pem or b"", mat.client_ca_pem or b"")


def test_index_renders_one_token_service_for_its_registries() -> None:
    mat, objects = index_objects()
    kinds = by_key(objects)
    assert ("Deployment", "idx-token") in kinds and ("Service", "idx-token") in kinds
    assert not any(kind == "Deployment" and name == "idx" for kind, name in kinds)  # no registry of its own
    assert ("Secret", "idx-tls") not in kinds  # no registry certificate either
    config = json.loads(kinds[("ConfigMap", "idx-token")]["data"]["config.json"])
    assert config["services"] == ["dev.ns.svc", "prod.ns.svc"] and "service" not in config
    assert [r.get("services") for r in config["access"]] == [["prod.ns.svc"], ["dev.ns.svc"], None]
    owner = kinds[("Deployment", "idx-token")]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("RegistryIndex", "idx", "2222")
    assert set(mat.passwords) == {"alice", "ci"} and mat.token_signing and mat.token_tls and mat.ca
    assert "localhost" in pki.sans(pki.load_chain(mat.token_tls.cert_pem)[0])
    policy = kinds[("NetworkPolicy", "idx-token")]["spec"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 5001}]}]  # its port only, from anywhere
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "idx"


def test_index_rules_naming_service_accounts_use_the_index_realm_as_audience() -> None:
    ci_rule = {"serviceAccounts": ["ci/*"], "registries": ["prod"], "repositories": ["*"], "actions": ["pull"]}
    _, objects = index_objects({**INDEX_SPEC, "access": [*INDEX_SPEC["access"], ci_rule]})
    kinds = by_key(objects)
    config = json.loads(kinds[("ConfigMap", "idx-token")]["data"]["config.json"])
    assert config["serviceAccountAudience"] == "https://idx-token.ns.svc:5001/token"
    assert config["access"][-1]["serviceAccounts"] == ["ci/*"] and config["access"][-1]["services"] == ["prod.ns.svc"]
    assert kinds[("Deployment", "idx-token")]["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_a_settled_index_renders_the_same_objects_again() -> None:
    _, first = index_objects()
    _, again = index_objects(observed=decode_secrets(first))
    assert again == first


def test_joined_registry_trusts_the_index_and_runs_no_token_service() -> None:
    mat, _ = index_objects()
    joined = joined_from(mat)
    s = spec.parse("prod", "ns", JOINED)
    reg_mat = material.decide(s, {}, joined=joined)
    objects = by_key(render.desired(s, reg_mat, {**OWNER, "metadata": {**OWNER["metadata"], "name": "prod"}},
                                    "registry-operator:test", joined=joined))
    assert not [k for k in objects if k[1].startswith("prod-token")]
    config = yaml.safe_load(objects[("ConfigMap", "prod-config")]["data"]["config.yml"])["auth"]["token"]
    assert config["realm"] == joined.realm and config["service"] == "prod.ns.svc"
    volumes = objects[("Deployment", "prod")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "token", "secret": {"secretName": "idx-token-signing", "defaultMode": 0o440,
                                        "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in volumes
    assert reg_mat.token_signing is None and reg_mat.token_trust_pem == joined.trust_pem
    assert reg_mat.client_ca_pem is not None and joined.ca_pem in reg_mat.client_ca_pem  # one bundle for clients
    assert render.obsolete(s)  # a former token service of its own is deleted


def test_signing_key_rotation_reaches_every_joined_registry_with_an_overlap() -> None:
    """A new signing key (here: the algorithm changed) is trusted next to the old one, and the trust bundle is
    in each joined registry's pod-template hash, so each one rolls onto the bundle holding both."""
    old_mat, old_objects = index_objects()
    new_mat, _ = index_objects({**INDEX_SPEC, "tokenAlgorithm": "RS256"}, decode_secrets(old_objects))
    assert [r.reason for r in new_mat.rotations] == ["SigningKeyRotated"]
    assert new_mat.token_signing and old_mat.token_signing
    trusted = pki.split(new_mat.token_trust_pem or b"")
    assert trusted[0] == new_mat.token_signing.cert_pem and old_mat.token_signing.cert_pem in trusted
    hashes = {}
    for name in ("dev", "prod"):
        s = spec.parse(name, "ns", JOINED)
        for label, m in (("old", old_mat), ("new", new_mat)):
            j = joined_from(m)
            reg_objects = render.desired(s, material.decide(s, {}, joined=j), OWNER, "img", joined=j)
            template = by_key(reg_objects)[("Deployment", name)]["spec"]["template"]
            hashes[(name, label)] = template["metadata"]["annotations"]["registry.operator.dev/inputs-hash"]
    assert hashes[("dev", "old")] != hashes[("dev", "new")] and hashes[("prod", "old")] != hashes[("prod", "new")]


def test_join_says_why_a_registry_cannot_join() -> None:
    s = spec.parse("prod", "ns", JOINED)
    missing = index.join(s, None, {})
    assert isinstance(missing, Problem) and missing.reason == "IndexNotFound"
    elsewhere = index.join(spec.parse("prod", "ns", {"auth": {"mode": "token",
                                                              "indexRef": {"name": "idx", "namespace": "other"}}}),
                           {"spec": INDEX_SPEC}, {})
    assert isinstance(elsewhere, Problem) and elsewhere.reason == "IndexInOtherNamespace"
    not_ready = index.join(s, {"spec": INDEX_SPEC}, {})
    assert isinstance(not_ready, Problem) and not_ready.reason == "IndexNotReady"
    _, objects = index_objects()
    joined = index.join(s, {"spec": {**INDEX_SPEC, "tokenRealm": "https://localhost:1/token"}}, decode_secrets(objects))
    assert isinstance(joined, Joined) and joined.realm == "https://localhost:1/token"
    for problem in (missing, elsewhere, not_ready):
        status = conditions.compute(s, 1, [problem], {}, {}, None, pki.now())
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", problem.reason)


def test_members_and_published_status() -> None:
    listed = [
        {"metadata": {"name": "prod"}, "spec": JOINED},
        {"metadata": {"name": "dev"}, "spec": {**JOINED, "service": {"port": 443}}},
        {"metadata": {"name": "other"}, "spec": {"auth": {"mode": "token", "indexRef": {"name": "x"}}}},
        {"metadata": {"name": "gone", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": JOINED},
        {"metadata": {"name": "own"}, "spec": {"auth": {"mode": "htpasswd", "users": [{"name": "a"}]}}},
    ]
    members = index.members("idx", "ns", listed)
    assert sorted(members) == ["dev", "prod"]
    s = spec.parse_index("idx", "ns", INDEX_SPEC)
    published = index.published(s, {"alice": "x"}, members, ["ci-password"])
    assert published["registries"] == [{"name": "dev", "endpoint": "dev.ns.svc:443"},
                                       {"name": "prod", "endpoint": "prod.ns.svc:5000"}]
    assert (published["registryCount"], published["userCount"]) == (2, 2)
    assert published["unwatchedSecrets"] == ["ci-password"] and published["credentialsSecretName"] == "idx-passwords"
    assert published["tokenRealm"] == "https://idx-token.ns.svc:5001/token"
    status = conditions.compute_index(s, 3, [], None, published, None, pki.now())
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "Creating"


def test_index_crd_is_generated_from_the_registry_crd() -> None:
    """The index's users, groups, rules and token fields are the Registry's schema fragments, not copies."""
    assert (Path(crdgen.TARGET).read_text()) == crdgen.render(), "run hack/crdgen.py"
    registry = yaml.safe_load(crdgen.SOURCE.read_text())
    auth = registry["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["auth"]
    idx = yaml.safe_load(crdgen.TARGET.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert idx["properties"]["spec"]["properties"]["access"] == auth["properties"]["access"]
    assert "registries" in auth["properties"]["access"]["items"]["properties"]


def test_every_child_an_index_renders_is_observed() -> None:
    """observe reads (and apply compares against) every child the index can render."""
    _, objects = index_objects()
    candidates = {(kind, name) for _, kind, name in index_candidates(spec.parse_index("idx", "ns", INDEX_SPEC))}
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == candidates
