"""The startup permission check asks for what the shipped RBAC grants, no more and no less."""

from __future__ import annotations

from pathlib import Path

import yaml

from registry_operator import permissions
from registry_operator.config import Config

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "base" / "rbac.yaml"


def granted() -> set[tuple[str, str, str]]:
    out = set()
    for doc in yaml.safe_load_all(MANIFESTS.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_everything_checked_is_granted_by_the_shipped_rbac():
    config = Config(leader_election=True)
    checked = {(g, r, v) for g, r, v, _ in permissions.wanted(config)}
    assert checked <= granted()
    needed = {(g, r, v) for g, r, verbs in permissions.NEEDED for v in verbs}
    assert needed <= checked


def test_namespaced_checks_only_the_named_namespaces():
    checks = permissions.wanted(Config(namespaces=("a", "b")))
    assert {ns for *_, ns in checks} == {"a", "b"}
    assert not [c for c in checks if c[1] in ("customresourcedefinitions", "namespaces")]


def test_globs_need_the_namespace_list_and_cluster_wide_rights():
    checks = permissions.wanted(Config(namespaces=("team-*",)))
    assert ("", "namespaces", "list", "") in checks and {ns for *_, ns in checks} == {""}


def test_missing_permissions_read_like_kubectl():
    assert permissions.describe("registry.operator.dev", "registries/status", "patch", "t") == \
        "patch registries.registry.operator.dev/status in namespace t"
    assert permissions.describe("", "secrets", "list", "") == "list secrets in all namespaces"
