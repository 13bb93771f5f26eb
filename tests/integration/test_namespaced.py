"""The operator scoped to named namespaces: under the cluster-wide RBAC, and as the namespaced install
(manifests/namespaced/) with exactly the permissions that install grants."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from registries import is_ready, manifest

REPO = Path(__file__).resolve().parents[2]
PERMISSION_WORDS = ("Forbidden", "forbidden", "403", "Not enough permissions")


def namespaced_install(tmp_path: Path, namespace: str) -> Path:
    """An overlay of manifests/namespaced/ that moves it to `namespace`, as a user would."""
    overlay = tmp_path / "install"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(REPO / "manifests" / "namespaced", overlay)]}))  # fmt: skip
    return overlay


def test_named_namespace_needs_no_namespace_list(cluster, kube_client, namespace, operator_factory,
                                                 operator_rbac_kubeconfig, wait_for):
    started = time.monotonic()
    op = operator_factory(kubeconfig=operator_rbac_kubeconfig, args=["--namespace", namespace])
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=30, what="Registry Ready")
    print(f"operator start to Ready: {time.monotonic() - started:.1f}s")
    assert "Not enough permissions to list namespaces" not in op.log()


def test_namespaced_install_works_with_exactly_its_rbac(cluster, kube_client, namespace, operator_factory,
                                                        tmp_path, wait_for):
    """`kubectl apply -k manifests/namespaced/`, moved to this test's namespace the way a user would (kustomize
    `namespace:`): its RBAC, its Deployment's arguments and environment, and nothing cluster-wide."""
    overlay = namespaced_install(tmp_path, namespace)
    objects = cluster.render_manifests(overlay)
    assert not [o for o in objects if o["kind"] == "ClusterRoleBinding"], "namespaced install binds cluster-wide"
    sa_namespace, sa = cluster.apply_rbac(overlay)
    assert sa_namespace == namespace
    user = f"system:serviceaccount:{namespace}:{sa}"
    for verb, resource in (("list", "secrets"), ("list", "registries.registry.operator.dev"), ("list", "namespaces"),
                           ("watch", "deployments.apps"), ("create", "secrets")):
        answer = cluster.kubectl("auth", "can-i", verb, resource, "--all-namespaces", "--as", user, check=False)
        assert answer.stdout.strip() == "no", f"{verb} {resource} cluster-wide"
    kubeconfig = cluster.token_kubeconfig(tmp_path / "kubeconfig", namespace, sa)

    # The Deployment's own arguments and environment, as the kubelet would expand them.
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {"POD_NAME": "op-0", "POD_NAMESPACE": namespace, "REGISTRY_OPERATOR_LEASE_NAMESPACE": namespace}
    assert {e["name"] for e in container["env"]} >= set(env)
    args = [a.replace("$(POD_NAMESPACE)", namespace) for a in container["args"] if not a.startswith("--liveness")]
    assert f"--namespace={namespace}" in args and "--leader-elect" in args
    op = operator_factory(kubeconfig=kubeconfig, args=args, env=env)

    cluster.apply(manifest("reg", namespace, {"auth": {"mode": "token", "users": [{"name": "alice"}]}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    op.wait_for_log("acquired Lease")
    problems = [line for line in op.log().splitlines() if any(word in line for word in PERMISSION_WORDS)]
    assert not problems, "\n".join(problems)


def test_a_missing_permission_is_one_clear_line_and_an_exit(cluster, namespace, operator_factory, tmp_path):
    """Asked to watch a namespace its RBAC does not cover, the operator says what is missing and exits, rather
    than retrying 403s behind a liveness endpoint that answers 200."""
    sa_namespace, sa = cluster.apply_rbac(namespaced_install(tmp_path, namespace))
    kubeconfig = cluster.token_kubeconfig(tmp_path / "kubeconfig", sa_namespace, sa)
    with pytest.raises(AssertionError, match="exited with code 2") as failed:
        operator_factory(kubeconfig=kubeconfig, args=["--namespace", namespace, "--namespace", "kube-public"],
                         ready_timeout=30)
    lines = [line for line in (tmp_path / "operator-0.log").read_text().splitlines() if "cannot watch" in line]
    assert len(lines) == 1, failed.value
    assert "list registries.registry.operator.dev in namespace kube-public" in lines[0]
    assert f"namespace {namespace}" not in lines[0]
