"""Garbage collection with the real registry: a deleted image's blobs leave the storage, the other image
pulls byte-identical, and a push during the read-only window is refused.

podrunner plays the kubelet for the registry's pods and for the GC Job's pod, on one claim directory. A
ResourceQuota of one pod keeps the control plane from creating (and kwok from faking) the Job's pod: the
Job's status is set from the real run's exit code, as the Job controller would from the real pod.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolume
from lightkube.types import PatchType

from registry_operator.names import GC_REQUESTED
from tests.support import https, ociimage
from tests.support.clients import ClientError, Crane
from tests.support.deployed import VERSIONS, DeployedRegistry, wait_for
from tests.support.podrunner import ApiSources, PodRunner

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)


def _job(reg: DeployedRegistry) -> dict[str, Any] | None:
    try:
        return reg.client.get(Job, f"{reg.name}-gc", namespace=reg.namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _blob(reg: DeployedRegistry, claim: str, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return reg.workdir / "pvc" / claim / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def _restart(reg: DeployedRegistry, old_hash: str, what: str) -> None:
    """Play the kubelet for a Recreate rollout: once the template changed and the operator waits for it."""
    wait_for(lambda: reg.inputs_hash() != old_hash, f"the pod template to change ({what})")
    reg.runner.stop()
    reg.start_pod()


def _complete(reg: DeployedRegistry, exit_code: int) -> None:
    """Set the Job's status from the real pod's exit code, as the Job controller would."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if exit_code == 0:
        types, reason, extra = ("SuccessCriteriaMet", "Complete"), "CompletionsReached", {"succeeded": 1,
                                                                                          "completionTime": now}
    else:
        types, reason, extra = ("FailureTarget", "Failed"), "BackoffLimitExceeded", {"failed": 1}
    conditions = [{"type": t, "status": "True", "reason": reason, "message": "set from the local run",
                   "lastProbeTime": now, "lastTransitionTime": now} for t in types]
    reg.client.patch(Job.Status, f"{reg.name}-gc", {"status": {"conditions": conditions, **extra}},
                     namespace=reg.namespace, patch_type=PatchType.MERGE)


def test_collection_frees_a_deleted_image_and_keeps_the_other(
    deploy: Callable[..., DeployedRegistry], kube_client: Any, cluster: Any, version: str, tmp_path: Path
) -> None:
    storage_class = f"e2e-gc-{secrets.token_hex(3)}"
    kube_client.create(PersistentVolume(
        metadata=ObjectMeta(name=storage_class),
        spec={"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
              "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/{storage_class}"}},
    ))  # fmt: skip
    try:
        claim = {"size": "1Gi", "storageClassName": storage_class}
        reg = deploy(version, storage={"deleteEnabled": True, "persistentVolumeClaim": claim})
        cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: one-pod, namespace: {reg.namespace}}}"
                      "\nspec: {hard: {pods: '1'}}\n")
        ca, creds = reg.ca_pem(), ("alice", reg.passwords()["alice"])
        gone = ociimage.build(tmp_path / "gone", tag="v1", layers=2, size=256 * 1024)
        kept = ociimage.build(tmp_path / "kept", tag="v1", layers=2, size=256 * 1024)
        crane = Crane(tmp_path / "c1", ca, reg.address, creds)
        ref = f"{reg.address}/e2e/app"
        crane.run("push", str(gone.path), f"{ref}:gone")
        crane.run("push", str(kept.path), f"{ref}:kept")
        crane.run("delete", f"{ref}@{gone.manifest_digest}")
        claim_name = f"{reg.name}-data"
        assert all(_blob(reg, claim_name, d).exists() for d in gone.blob_digests)  # deleting frees nothing

        # Request a collection: the registry turns read-only first.
        hash_rw = reg.inputs_hash()
        started = time.monotonic()
        cluster.kubectl("annotate", "registry", reg.name, "-n", reg.namespace, f"{GC_REQUESTED}=e2e", "--overwrite")
        _restart(reg, hash_rw, "read-only")
        hash_ro = reg.inputs_hash()
        job = wait_for(lambda: (j := _job(reg)) and not j["spec"]["suspend"] and j, "the GC Job resumed")
        crane_ro = Crane(tmp_path / "c2", ca, reg.address, creds)
        with pytest.raises(ClientError, match="405|UNSUPPORTED"):
            crane_ro.run("push", str(kept.path), f"{reg.address}/e2e/app:during-gc")

        # Play the kubelet for the Job's pod, on the same claim directory.
        gc_pod = PodRunner(job, ApiSources(reg.client, reg.namespace), reg.workdir)
        code = gc_pod.run(timeout=120)
        assert code == 0, gc_pod.logs()
        _complete(reg, code)
        _restart(reg, hash_ro, "read-write after the collection")
        status = wait_for(lambda: (reg.get().get("status") or {}).get("garbageCollection", {}).get("lastResult")
                          and reg.get()["status"]["garbageCollection"], "the recorded result")
        deleted = sum("eligible for deletion" in line for line in gc_pod.logs().splitlines())
        print(f"{version}: request -> result recorded {time.monotonic() - started:.2f}s; GC log: {deleted} "
              "blobs/manifests eligible for deletion")
        assert status["lastResult"] == "Succeeded" and status["lastRequest"] == "e2e"
        wait_for(lambda: _job(reg) is None, "the GC Job deleted")

        assert not any(_blob(reg, claim_name, d).exists() for d in gone.blob_digests), gc_pod.logs()
        assert all(_blob(reg, claim_name, d).exists() for d in kept.blob_digests)
        after = Crane(tmp_path / "c3", ca, reg.address, creds)
        manifest = https.request(reg.address, ca, reg.host, "GET", "/v2/e2e/app/manifests/kept", auth=creds,
                                 headers={"Accept": ociimage.MANIFEST})
        assert manifest.status == 200 and ociimage.sha256_digest(manifest.body) == kept.manifest_digest
        for digest in kept.blob_digests:
            blob = https.request(reg.address, ca, reg.host, "GET", f"/v2/e2e/app/blobs/{digest}", auth=creds)
            assert blob.body == (kept.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        ref = f"{reg.address}/e2e/app"
        after.run("push", str(kept.path), f"{ref}:after-gc")  # read-write again
    finally:
        kube_client.delete(PersistentVolume, storage_class)

