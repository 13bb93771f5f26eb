"""The local control plane behaves like a real cluster where the operator depends on it.

Namespaces, Deployments that become available (kwok fake nodes + kube-scheduler), ownerReference garbage
collection (also with a custom resource as the owner), RBAC for ServiceAccount tokens, and version skew.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from lightkube import ApiError, Client, KubeConfig, codecs
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, Secret

REPO = Path(__file__).resolve().parents[2]


RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_the_readme_install_finds_the_crds_applied_as_it_applies_them(cluster) -> None:
    """`kubectl apply -k manifests/` (the README's install, the quickstart's) on a cluster whose CRDs the
    fixtures installed: no warning about a missing last-applied annotation, nothing to change."""
    res = cluster.kubectl("apply", "-k", str(REPO / "crds"), "--dry-run=server")  # the CRDs of manifests/
    assert "last-applied-configuration" not in res.stderr
    crds = [line for line in res.stdout.splitlines() if line.startswith("customresourcedefinition")]
    assert crds and all(line.endswith("unchanged (server dry run)") for line in crds), crds


def test_namespace_is_active(kube_client: Client, namespace: str) -> None:
    ns = kube_client.get(Namespace, namespace)
    assert ns.status.phase == "Active"


def test_test_namespaces_enforce_pod_security_restricted(kube_client: Client, namespace: str) -> None:
    """Every rendered pod is admitted under `restricted`, because every test namespace enforces it."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": namespace},
           "spec": {"containers": [{"name": "c", "image": "registry:3"}]}}  # fmt: skip
    with pytest.raises(ApiError) as refused:
        kube_client.create(codecs.from_dict(pod))
    assert refused.value.status.code == 403 and "restricted" in refused.value.status.message
    pod["spec"] = {"securityContext": RESTRICTED_POD,
                   "containers": [{"name": "c", "image": "registry:3", "securityContext": RESTRICTED_CONTAINER}]}
    kube_client.create(codecs.from_dict(pod), dry_run=True)


def test_server_and_kubectl_versions_match(cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    client, server = versions["clientVersion"], versions["serverVersion"]
    assert (client["major"], client["minor"]) == (server["major"], server["minor"]), versions


def test_deployment_becomes_available_on_kwok_nodes(kube_client: Client, namespace: str, wait_for) -> None:
    labels = {"app": "web"}
    deployment = codecs.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": RESTRICTED_POD,
                        "containers": [
                            {
                                "name": "registry",
                                "image": "registry:3",
                                "ports": [{"containerPort": 5000}],
                                "readinessProbe": {"httpGet": {"path": "/", "port": 5000}},
                                "securityContext": RESTRICTED_CONTAINER,
                            }
                        ],
                    },
                },
            },
        }
    )
    kube_client.create(deployment)

    def available():
        d = kube_client.get(Deployment, "web", namespace=namespace)
        return d.status and d.status.availableReplicas == 2 and d

    d = wait_for(available, timeout=60, what="Deployment web to have 2 available replicas")
    assert any(c.type == "Available" and c.status == "True" for c in d.status.conditions)
    pods = list(kube_client.list(Pod, namespace=namespace, labels=labels))
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.nodeName.startswith("kwok-node-")
        assert pod.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def _owner_ref(owner) -> OwnerReference:
    return OwnerReference(
        apiVersion=owner.apiVersion,
        kind=owner.kind,
        name=owner.metadata.name,
        uid=owner.metadata.uid,
        controller=True,
        blockOwnerDeletion=True,
    )


def test_owner_reference_garbage_collection(kube_client: Client, namespace: str, wait_for) -> None:
    owner = kube_client.create(ConfigMap(metadata=ObjectMeta(name="owner", namespace=namespace), data={"a": "b"}))
    kube_client.create(
        Secret(metadata=ObjectMeta(name="child", namespace=namespace, ownerReferences=[_owner_ref(owner)]))
    )
    kube_client.delete(ConfigMap, "owner", namespace=namespace)

    def child_gone() -> bool:
        try:
            kube_client.get(Secret, "child", namespace=namespace)
        except ApiError as e:
            return e.status.code == 404
        return False

    # The garbage collector reacts within a second or so; 40 s would mean it did not know the kind.
    wait_for(child_gone, timeout=20, what="the garbage collector to delete the child Secret")


def _example_custom_resources() -> list[dict]:
    """Custom resources from examples/ whose CRD is in crds/ (e.g. a Registry)."""
    kinds = set()
    for path in sorted((REPO / "crds").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                kinds.add((doc["spec"]["group"], doc["spec"]["names"]["kind"]))
    found = []
    for path in sorted((REPO / "examples").glob("**/*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and (doc.get("apiVersion", "").split("/")[0], doc.get("kind")) in kinds:
                found.append(doc)
    return found


def test_owner_reference_garbage_collection_with_custom_resource_owner(
    cluster, kube_client: Client, namespace: str, wait_for
) -> None:
    """CRDs are installed before kube-controller-manager starts, so the garbage collector knows them at once."""
    examples = _example_custom_resources()
    if not examples:
        pytest.skip("no custom resource example in examples/ whose CRD is in crds/ yet")
    obj = dict(examples[0])
    obj["metadata"] = {"name": "gc-owner", "namespace": namespace}
    cluster.apply(yaml.safe_dump(obj))
    plural_ref = f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}"
    uid = cluster.kubectl("get", plural_ref, "gc-owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    owner_ref = OwnerReference(
        apiVersion=obj["apiVersion"], kind=obj["kind"], name="gc-owner", uid=uid, controller=True,
        blockOwnerDeletion=True,
    )  # fmt: skip
    kube_client.create(
        ConfigMap(metadata=ObjectMeta(name="cr-child", namespace=namespace, ownerReferences=[owner_ref]))
    )
    cluster.kubectl("delete", plural_ref, "gc-owner", "-n", namespace, "--wait=false")

    def child_gone() -> bool:
        try:
            kube_client.get(ConfigMap, "cr-child", namespace=namespace)
        except ApiError as e:
            return e.status.code == 404
        return False

    wait_for(child_gone, timeout=20, what=f"the garbage collector to delete the child of a {obj['kind']}")


def test_rbac_denies_an_unprivileged_service_account(cluster, namespace: str, tmp_path: Path, wait_for) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    path = cluster.token_kubeconfig(tmp_path / "kubeconfig", namespace, "nobody")

    whoami = cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=path)
    assert whoami.stdout == f"system:serviceaccount:{namespace}:nobody"

    client = Client(KubeConfig.from_file(path))
    with pytest.raises(ApiError) as denied:
        list(client.list(Secret, namespace=namespace))
    assert denied.value.status.code == 403

    # A Role grants exactly what it says: reading ConfigMaps works, Secrets stay forbidden.
    cluster.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    cluster.kubectl(
        "create", "rolebinding", "read-cm", "--role=read-cm",
        f"--serviceaccount={namespace}:nobody", "-n", namespace,
    )  # fmt: skip

    def reads_config_maps() -> bool:  # the authorizer learns of a new RoleBinding from a watch: not at once
        try:
            return list(client.list(ConfigMap, namespace=namespace)) is not None
        except ApiError as exc:
            assert exc.status.code == 403
            return False

    wait_for(reads_config_maps, timeout=20, what="the RoleBinding to take effect")
    with pytest.raises(ApiError) as still_denied:
        client.get(Secret, "anything", namespace=namespace)
    assert still_denied.value.status.code == 403
    can_i = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace, kubeconfig=path, check=False)
    assert can_i.stdout.strip() == "no"


operator_missing = importlib.util.find_spec("registry_operator.__main__") is None


@pytest.mark.skipif(operator_missing, reason="registry_operator.__main__ does not exist yet")
def test_operator_fixture_starts_and_stays_up(operator) -> None:
    operator.assert_running()


@pytest.mark.skipif(operator_missing, reason="registry_operator.__main__ does not exist yet")
def test_operator_runs_with_its_own_rbac(operator_with_rbac) -> None:
    import time

    time.sleep(2)  # let it list and watch everything it needs
    operator_with_rbac.assert_running()
    log = operator_with_rbac.log()
    # A 403 anywhere but in a timestamp's milliseconds ("22:30:37,403" once failed this test).
    assert not re.search(r"(?<![,\d])403(?!\d)|[Ff]orbidden", log), log[-4000:]


def test_async_client_fixture(async_kube_client, namespace: str) -> None:
    import asyncio

    async def names() -> list[str]:
        return [ns.metadata.name async for ns in async_kube_client.list(Namespace)]

    assert namespace in asyncio.run(names())


def test_hack_build_knows_every_component_and_the_control_plane_is_current() -> None:
    import subprocess

    dirs = subprocess.run([REPO / "hack" / "build", "--print-dirs"], capture_output=True, text=True, check=True)
    names = [line.split("=", 1)[0] for line in dirs.stdout.splitlines()]
    expected = ["k8s", "etcd", "kwok", "distribution", "crane", "oci-conformance", "versitygw"]
    assert names == expected, dirs
    bench = subprocess.run([REPO / "hack" / "build", "--print-dirs", "bench"], capture_output=True, text=True)
    assert [line.split("=", 1)[0] for line in bench.stdout.splitlines()] == ["token_server"], bench
    check = subprocess.run([REPO / "hack" / "build", "--check", "all"], capture_output=True, text=True)
    assert "command not found" not in check.stderr, check.stderr
    check = subprocess.run([REPO / "hack" / "build", "--check", "control-plane"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
