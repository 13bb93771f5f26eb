"""Garbage collection with the real registry: a deleted image's blobs leave the storage, the other image
pulls byte-identical, a push during the read-only window is refused, and the blobs and bytes freed and the
usage left that status reports are exactly what left (and stayed in) the storage directory.

podrunner plays the kubelet for the registry's pods and for the GC Job's pod (all its containers), on one
claim directory. A ValidatingAdmissionPolicy refusing Job-owned pods keeps the control plane from creating
(and kwok from faking) the Job's pod: the Job's status is set from the real run's exit codes, as the Job
controller would, and the run's termination messages are published on a stand-in pod no one else runs, as
the kubelet would on the real one.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolume, Pod
from lightkube.types import PatchType

from registry_operator import names
from registry_operator.names import GC_REQUESTED
from tests.support import https, ociimage
from tests.support.clients import ClientError, Crane
from tests.support.deployed import VERSIONS, DeployedRegistry, wait_for
from tests.support.podrunner import ApiSources, PodRunner, run_pod

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
GC = "test_gc_storage: runs the GC Job's pod itself and reads the claim's files"


def _job(reg: DeployedRegistry) -> dict[str, Any] | None:
    try:
        return reg.client.get(Job, f"{reg.name}-gc", namespace=reg.namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def _no_job_pods(cluster: Any, kube_client: Any, namespace: str) -> Callable[[], None]:
    """Refuse pods owned by a Job in `namespace` (the GC Job's pod is run by podrunner instead); the undo."""
    name = f"{namespace}-no-job-pods"
    cluster.apply(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                  "validations": [{"expression": "!has(object.metadata.ownerReferences) || "
                                                 "!object.metadata.ownerReferences.exists(r, r.kind == 'Job')",
                                   "message": "Job pods are run by the test's pod runner"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": namespace}}}}},
    ]))

    def undo() -> None:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                        "--ignore-not-found", check=False)

    # The API server takes policies up asynchronously: until it refuses a Job's pod (a server-side dry run),
    # the Job controller's pod would reach kwok, which completes Job pods, and the Job would end unseen.
    probe = Pod(metadata=ObjectMeta(generateName="probe-", namespace=namespace, ownerReferences=[
        OwnerReference(apiVersion="batch/v1", kind="Job", name="probe", uid="00000000-0000-0000-0000-000000000000")]),
        spec={"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
              "containers": [{"name": "c", "image": "probe", "securityContext": {
                  "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]})  # fmt: skip

    def refused() -> bool:
        try:
            kube_client.create(probe, dry_run=True)
        except ApiError as exc:
            return "Job pods are run by the test's pod runner" in (exc.status.message or "")
        return False

    wait_for(refused, "the policy refusing Job pods", timeout=30)
    return undo


def run_gc_pod(reg: DeployedRegistry, job: dict[str, Any]) -> list[tuple[PodRunner, int]]:
    """Play the kubelet for the Job's pod: run its containers, then publish their ends (exit codes, termination
    messages) on a stand-in pod with the Job pod's labels and containers, which no scheduler, kwok or
    controller touches (it names a scheduler that does not exist)."""
    runs = run_pod(job, ApiSources(reg.client, reg.namespace), reg.workdir)
    template = job["spec"]["template"]["spec"]
    brief = lambda cs: [{k: c[k] for k in ("name", "image", "securityContext") if k in c} for c in cs]  # noqa: E731
    pod = reg.client.create(Pod(
        metadata=ObjectMeta(name=f"{reg.name}-gc-local", namespace=reg.namespace,
                            labels=names.labels(reg.name, names.COMPONENT_GC)),
        spec={"schedulerName": "e2e-nobody", "restartPolicy": "Never", "containers": brief(template["containers"]),
              "securityContext": template.get("securityContext") or {},
              "initContainers": brief(template.get("initContainers") or [])},
    ))  # fmt: skip
    ended = {r.container["name"]: {"name": r.container["name"], "image": r.container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else
                                                            "Error", "message": _message(r)}}}
             for r, code in runs}
    status = {"phase": "Succeeded" if all(code == 0 for _, code in runs) else "Failed",
              "initContainerStatuses": [ended[c["name"]] for c in template.get("initContainers") or []
                                        if c["name"] in ended],
              "containerStatuses": [ended[c["name"]] for c in template["containers"] if c["name"] in ended]}
    reg.client.patch(Pod.Status, pod.metadata.name, {"status": status}, namespace=reg.namespace,
                     patch_type=PatchType.MERGE)
    return runs


def _message(runner: PodRunner) -> str:
    """The termination message the kubelet would report: the file the container names, else (every container
    here has FallbackToLogsOnError) the end of its log if it failed. The API server defaults the path to
    /dev/termination-log, which none of them writes: the kubelet would find it empty."""
    if runner.container.get("terminationMessagePath", "/dev/termination-log") != "/dev/termination-log":
        return runner.termination_message()
    return "" if runner.process is None or runner.process.returncode == 0 else runner.logs()[-2048:]


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
    try:
        reg.client.patch(Job.Status, f"{reg.name}-gc", {"status": {"conditions": conditions, **extra}},
                         namespace=reg.namespace, patch_type=PatchType.MERGE)
    except ApiError as exc:
        if exc.status.code != 404:
            raise
        said = (reg.get().get("status") or {}).get("garbageCollection")
        raise AssertionError(f"the GC Job ended before the test set its status: it is gone, and the Registry's "
                             f"status.garbageCollection says {said}") from None


def test_collection_frees_a_deleted_image_and_keeps_the_other(
    deploy: Callable[..., DeployedRegistry], kube_client: Any, cluster: Any, version: str, tmp_path: Path
) -> None:
    storage_class = f"e2e-gc-{secrets.token_hex(3)}"
    kube_client.create(PersistentVolume(
        metadata=ObjectMeta(name=storage_class),
        spec={"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
              "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/nonexistent/{storage_class}"}},
    ))  # fmt: skip
    undo: Callable[[], None] | None = None
    try:
        claim = {"size": "1Gi", "storageClassName": storage_class}
        reg = deploy(version, storage={"deleteEnabled": True, "persistentVolumeClaim": claim}, pod_runner=GC)
        undo = _no_job_pods(cluster, kube_client, reg.namespace)
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
        blobs_root = reg.workdir / "pvc" / claim_name / "docker" / "registry" / "v2" / "blobs"
        stored = {p: p.stat().st_size for p in blobs_root.rglob("data")}
        runs = run_gc_pod(reg, job)
        logs = "\n".join(f"--- {r.container['name']}\n{r.logs()}" for r, _ in runs)
        assert [code for _, code in runs] == [0, 0, 0], logs
        gc_pod = next(r for r, _ in runs if r.container["name"] == "garbage-collect")
        _complete(reg, 0)
        _restart(reg, hash_ro, "read-write after the collection")
        status = wait_for(lambda: (reg.get().get("status") or {}).get("garbageCollection", {}).get("lastResult")
                          and reg.get()["status"]["garbageCollection"], "the recorded result")
        deleted = sum("eligible for deletion" in line for line in gc_pod.logs().splitlines())
        print(f"{version}: request -> result recorded {time.monotonic() - started:.2f}s; GC log: {deleted} "
              "blobs/manifests eligible for deletion")
        assert status["lastResult"] == "Succeeded" and status["lastRequest"] == "e2e"
        wait_for(lambda: _job(reg) is None, "the GC Job deleted")
        # What status says was freed is what left the directory; what it says is used, what stayed there.
        left = {p: p.stat().st_size for p in blobs_root.rglob("data")}
        freed = {p: size for p, size in stored.items() if p not in left}
        assert freed and status["lastBlobsFreed"] == len(freed), logs
        assert status["lastBytesFreed"] == sum(freed.values()), logs
        usage = reg.get()["status"]["usage"]
        assert (usage["blobs"], usage["bytes"], usage["repositories"]) == (len(left), sum(left.values()), 1)
        assert usage["measuredTime"] == status["lastEndTime"]
        print(f"{version}: freed {len(freed)} blobs, {sum(freed.values())} bytes; left {usage}")

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
        if undo is not None:
            undo()

