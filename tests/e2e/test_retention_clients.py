"""Retention with the real registry: `python -m registry_operator.prune` (the step that runs before
garbage-collect) against a Registry the operator deployed, fed the in-use references of a real Pod listed from
the real API server.

Four tags in one repository: `old` (oldest), `pinned` (a Pod in the cluster runs it), and `new` and `alias`
on one digest (newest). keepNewest 1 keeps `new` by rank and `alias` because deleting its digest would remove
`new` too; `pinned` stays because a Pod names it; only `old` goes. A dry run first deletes nothing.

The second test goes through the operator: a requested collection of a Registry with spec.retention creates
the retention Job and its ConfigMap; prune runs with that ConfigMap's rules and protected references and the
operator's robot$retention credential (podrunner cannot run the Job's pod itself: it reaches the registry by
its Service name, which does not resolve here, so the test runs the same program with the address swapped),
and the Job's completion (set as the Job controller would) moves the collection on to read-only. In htpasswd
mode and in token mode (prune answers the token service's Bearer challenge as robot$retention).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.core_v1 import Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile
from lightkube.models.core_v1 import SecurityContext as ContainerSecurityContext
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, PersistentVolume, Pod
from lightkube.types import PatchType

from registry_operator import inuse, pullsecrets, spec
from registry_operator.material import RETENTION_KEY
from registry_operator.names import GC_REQUESTED
from registry_operator.prune import PASSWORD_ENV, USER_ENV
from registry_operator.robot import RETENTION_USER
from tests.support import https, ociimage
from tests.support.clients import Crane
from tests.support.deployed import VERSIONS, DeployedRegistry, secret_data, wait_for
from tests.support.token_clients import ServiceProxy, start_token_service

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
JOBS = "test_retention: runs the retention Job's program itself and completes the Job, on a kwok volume"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _protected(reg: DeployedRegistry, kubeconfig: str) -> dict[str, list[str]]:
    """What the operator hands the Job: every workload image in the cluster, normalised to this registry."""

    async def images() -> list[str]:
        return await inuse.workload_images(AsyncClient(KubeConfig.from_file(kubeconfig)))

    typed = spec.parse(reg.name, reg.namespace, reg.get()["spec"])
    guard = inuse.protected(asyncio.run(images()), pullsecrets.endpoints(typed, "cluster.local"))
    return {"tags": sorted(f"{r}:{t}" for r, t in guard.tags), "digests": sorted(f"{r}@{d}" for r, d in guard.digests)}


def _prune(tmp_path: Path, reg: DeployedRegistry, creds: tuple[str, str], config: dict[str, Any]) -> tuple[
        dict[str, Any], str]:
    (tmp_path / "ca.crt").write_bytes(reg.ca_pem())
    path = tmp_path / f"retention-{secrets.token_hex(2)}.json"
    path.write_text(json.dumps({"registry": f"https://{reg.address}", **config}))
    env = {**os.environ, USER_ENV: creds[0], PASSWORD_ENV: creds[1],
           "PYTHONPATH": str(REPO_ROOT / "operator")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "registry_operator.prune", "--config", str(path),
                           "--ca", str(tmp_path / "ca.crt")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"prune ({'dry run' if config['retention'].get('dryRun') else 'deleting'}): "
          f"{time.monotonic() - started:.2f}s")
    return json.loads(done.stdout.splitlines()[-1]), done.stdout


def _push_four(tmp_path: Path, reg: DeployedRegistry, creds: tuple[str, str], ref: str) -> tuple[Crane, dict[str, Any]]:
    """old < pinned < new = alias (one digest), by the image config's `created`."""
    crane = Crane(tmp_path / "c", reg.ca_pem(), reg.address, creds)
    images = {}
    for name, created in (("old", "2026-01-01T00:00:00Z"), ("pinned", "2026-02-01T00:00:00Z"),
                          ("new", "2026-03-01T00:00:00.123456789Z")):
        images[name] = ociimage.build(tmp_path / name, tag="t", layers=1, size=4096, created=created)
        crane.run("push", str(images[name].path), f"{ref}:{name}")
    crane.run("tag", f"{ref}:new", "alias")
    return crane, images


def _pod(namespace: str, image: str) -> Pod:
    """A Pod naming `image` (the restricted Pod Security level of the test namespaces)."""
    restricted = ContainerSecurityContext(allowPrivilegeEscalation=False, capabilities=Capabilities(drop=["ALL"]))
    return Pod(metadata=ObjectMeta(name=f"uses-pinned-{secrets.token_hex(2)}", namespace=namespace),
               spec=PodSpec(containers=[Container(name="app", image=image, securityContext=restricted)],
                            securityContext=PodSecurityContext(runAsNonRoot=True, seccompProfile=SeccompProfile(
                                type="RuntimeDefault"))))


def test_retention_keeps_newest_in_use_and_shared_digest_tags(
    shared: Callable[[str], DeployedRegistry], kube_client: Any, kubeconfig: str, version: str, tmp_path: Path
) -> None:
    reg = shared(version)  # deleteEnabled
    creds = ("alice", reg.passwords()["alice"])
    repo = f"e2e/retention-{secrets.token_hex(3)}"
    ref = f"{reg.address}/{repo}"
    crane, images = _push_four(tmp_path, reg, creds, ref)
    pod = _pod(reg.namespace, f"{ref}:pinned")
    kube_client.create(pod)
    try:
        protected = _protected(reg, kubeconfig)
        assert f"{repo}:pinned" in protected["tags"]
        rules = {"repositories": [repo], "keepNewest": 1}

        summary, out = _prune(tmp_path, reg, creds, {"retention": {**rules, "dryRun": True},
                                                     "protected": protected})
        assert summary["dryRun"] and summary["deletedTags"] == [f"{repo}:old"], out
        assert f"would delete {repo}@{images['old'].manifest_digest}" in out
        assert sorted(crane.run("ls", ref).split()) == ["alias", "new", "old", "pinned"]  # dry: nothing deleted

        summary, out = _prune(tmp_path, reg, creds, {"retention": rules, "protected": protected})
        assert (summary["manifests"], summary["deletedTags"]) == (1, [f"{repo}:old"]), out
        assert summary["keptSharedDigestTags"] == [f"{repo}:alias"], out
        assert f"keeping {repo}:alias: shares its digest with kept tag new" in out
        assert sorted(crane.run("ls", ref).split()) == ["alias", "new", "pinned"]
        gone = https.request(reg.address, reg.ca_pem(), reg.host, "GET",
                             f"/v2/{repo}/manifests/{images['old'].manifest_digest}", auth=creds,
                             headers={"Accept": ociimage.MANIFEST})
        assert gone.status == 404
        crane.run("pull", f"{ref}:pinned", str(tmp_path / "pinned.tar"))  # the Pod's image still pulls
        assert (tmp_path / "pinned.tar").stat().st_size > 0

        summary, _ = _prune(tmp_path, reg, creds, {"retention": rules, "protected": protected})
        assert summary["manifests"] == 0  # settled: a second run deletes nothing
    finally:
        kube_client.delete(Pod, pod.metadata.name, namespace=reg.namespace)


@pytest.fixture
def claimed(kube_client: Any) -> Iterator[dict[str, str]]:
    """storage.persistentVolumeClaim on a PersistentVolume of its own (podrunner maps it to a directory)."""
    storage_class = f"e2e-retention-{secrets.token_hex(3)}"
    kube_client.create(PersistentVolume(
        metadata=ObjectMeta(name=storage_class),
        spec={"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
              "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/{storage_class}"}},
    ))  # fmt: skip
    yield {"size": "1Gi", "storageClassName": storage_class}
    kube_client.delete(PersistentVolume, storage_class)


def _through_operator(reg: DeployedRegistry, kube_client: Any, cluster: Any, tmp_path: Path,
                      pusher: tuple[str, str]) -> None:
    """Request a collection; run prune with the retention ConfigMap the operator made and its robot
    credential; complete the retention Job; the collection must then go read-only."""
    ref = f"{reg.address}/e2e/app"
    crane, images = _push_four(tmp_path, reg, pusher, ref)
    kube_client.create(_pod(reg.namespace, f"{reg.host}:5000/e2e/app:pinned"))  # by the Service's name
    # Keep kwok from creating (and faking) the retention Job's pod: this test runs it.
    pods = len(list(kube_client.list(Pod, namespace=reg.namespace)))
    cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: pods, namespace: {reg.namespace}}}"
                  f"\nspec: {{hard: {{pods: '{pods}'}}}}\n")

    cluster.kubectl("annotate", "registry", reg.name, "-n", reg.namespace, f"{GC_REQUESTED}=e2e", "--overwrite")
    name = f"{reg.name}-retention"
    wait_for(lambda: _get(kube_client, Job, name, reg.namespace), "the retention Job")
    config = json.loads(kube_client.get(ConfigMap, name, namespace=reg.namespace).data["config.json"])
    assert config["registry"] == f"https://{reg.host}:5000" and "e2e/app:pinned" in config["protected"]["tags"]
    robot = (RETENTION_USER, secret_data(kube_client, reg.namespace, f"{reg.name}-http-secret")[
        RETENTION_KEY].decode())
    config.pop("registry")  # the Service name does not resolve here: the same registry, by address

    summary, _ = _prune(tmp_path, reg, robot, {**config, "retention": {**config["retention"], "dryRun": True}})
    assert summary["deletedTags"] == ["e2e/app:old"]
    assert sorted(crane.run("ls", ref).split()) == ["alias", "new", "old", "pinned"]
    summary, out = _prune(tmp_path, reg, robot, config)  # pushes still accepted: read-write
    assert (summary["manifests"], summary["keptSharedDigestTags"]) == (1, ["e2e/app:alias"]), out
    assert sorted(crane.run("ls", ref).split()) == ["alias", "new", "pinned"]
    crane.run("pull", f"{ref}:pinned", str(tmp_path / "pinned.tar"))

    _complete(kube_client, name, reg.namespace)
    status = wait_for(lambda: (s := (reg.get().get("status") or {}).get("garbageCollection") or {}).get(
        "phase") == "SwitchingToReadOnly" and s, "the collection read-only after retention", timeout=60)
    assert status["lastRetention"]["result"] == "Succeeded"
    assert _get(kube_client, Job, f"{reg.name}-gc", reg.namespace) is not None


def test_a_requested_collection_runs_retention_with_the_operators_inputs_then_goes_read_only(
    deploy: Callable[..., DeployedRegistry], kube_client: Any, cluster: Any, version: str, tmp_path: Path,
    claimed: dict[str, str],
) -> None:
    reg = deploy(version, storage={"deleteEnabled": True, "persistentVolumeClaim": claimed},
                 garbageCollection={}, retention={"repositories": ["e2e/*"], "keepNewest": 1}, pod_runner=JOBS)
    _through_operator(reg, kube_client, cluster, tmp_path, ("alice", reg.passwords()["alice"]))


def test_in_token_mode_the_retention_robot_gets_tokens_to_list_and_delete(
    deploy: Callable[..., DeployedRegistry], kube_client: Any, cluster: Any, version: str, tmp_path: Path,
    claimed: dict[str, str],
) -> None:
    """prune answers the Bearer challenge; the token service grants robot$retention the catalog, pull and
    delete (alice may only push and pull e2e/*)."""
    proxy = ServiceProxy()
    token = None
    try:
        reg = deploy(version, pod=False, pod_runner=JOBS,
                     storage={"deleteEnabled": True, "persistentVolumeClaim": claimed},
                     garbageCollection={}, retention={"repositories": ["e2e/*"], "keepNewest": 1},
                     tls={"ipAddresses": ["127.0.0.1"], "dnsNames": ["localhost"]},
                     auth={"mode": "token", "users": [{"name": "alice"}],
                           "access": [{"users": ["alice"], "repositories": ["e2e/*"], "actions": ["pull", "push"]}],
                           "tokenRealm": f"https://localhost:{proxy.port}/token"})
        (tmp_path / "token").mkdir()
        token = start_token_service(reg, proxy, tmp_path / "token")
        reg.start_pod()
        _through_operator(reg, kube_client, cluster, tmp_path, ("alice", reg.passwords()["alice"]))
    finally:
        if token is not None:
            token.stop()
        proxy.close()


def _get(client: Any, kind: Any, name: str, namespace: str) -> Any:
    try:
        return client.get(kind, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _complete(client: Any, name: str, namespace: str) -> None:
    """Mark the Job complete, as the Job controller would once its pod exited 0."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [{"type": t, "status": "True", "reason": "CompletionsReached", "message": "set from the local run",
                   "lastProbeTime": now, "lastTransitionTime": now} for t in ("SuccessCriteriaMet", "Complete")]
    client.patch(Job.Status, name, {"status": {"conditions": conditions, "succeeded": 1,
                                               "completionTime": now}},
                 namespace=namespace, patch_type=PatchType.MERGE)
