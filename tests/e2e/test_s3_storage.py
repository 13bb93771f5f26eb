"""storage.s3 with the real registry (2.8 and 3.x) on a real S3 server (versitygw, tests/support/s3server):
push, pull, delete, then a garbage collection run by the operator: the deleted image's blobs leave the bucket
(listed through the S3 API), the other image pulls byte-identical, and a push during the read-only window is
refused.

podrunner plays the kubelet for the registry's pods and the GC Job's pod. The S3 keys reach both only through
the user's Secret (env from secretKeyRef), never the ConfigMap. A bucket is shared storage, so the registry rolls
(RollingUpdate, a surge pod) instead of being recreated; the Job's pod is kept from being created (and faked by
kwok) by a ValidatingAdmissionPolicy refusing Job-owned pods in the test's namespace, and the Job's status is set
from the real run's exit code, as the Job controller would from the real pod.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import ConfigMap

from registry_operator.names import GC_REQUESTED
from tests.e2e.conftest import registry_spec
from tests.e2e.test_gc_storage import _complete, _job, _no_job_pods, _restart, run_gc_pod
from tests.support import https, ociimage
from tests.support.clients import ClientError, Crane
from tests.support.deployed import VERSIONS, DeployedRegistry, create_registry, wait_for
from tests.support.s3server import S3Server

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)

ROOT = "reg-root"  # storage.s3.rootDirectory: every key the registry writes starts with it


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    started = time.monotonic()
    server = S3Server.start(tmp_path_factory.mktemp("s3"))
    print(f"versitygw up in {time.monotonic() - started:.2f}s at {server.endpoint}")
    yield server
    server.stop()


def _blob_keys(digests: list[str]) -> set[str]:
    return {f"{ROOT}/docker/registry/v2/blobs/sha256/{d[7:9]}/{d[7:]}/data" for d in digests}


def _bucket_registry(s3: S3Server, cluster: Any, kube_client: Any, operator: Any, namespace: str, version: str,
                     workdir: Path, **spec: Any) -> tuple[DeployedRegistry, str]:
    """(a Ready Registry, the fresh bucket of `s3` it stores in), its keys in the user's Secret `s3-creds`; no
    pod started."""
    bucket = f"e2e-{VERSIONS[version].replace('.', '')}-{secrets.token_hex(4)}"
    s3.create_bucket(bucket)
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    cluster.apply(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-creds, namespace: {namespace}}}\n"
                  f"data: {{accessKeyId: {b64(s3.access_key)}, secretAccessKey: {b64(s3.secret_key)}}}\n")
    storage = {"deleteEnabled": True, "s3": {"bucket": bucket, "endpoint": s3.endpoint, "forcePathStyle": True,
                                             "rootDirectory": f"/{ROOT}", "credentialsSecretRef": {"name": "s3-creds"}}}
    try:
        reg = create_registry(kube_client, namespace, "reg", registry_spec(version, storage=storage, **spec), workdir,
                              pod_runner="test_s3_storage: the S3 server listens on loopback only")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- operator log tail ---\n{operator.log()[-6000:]}") from None
    return reg, bucket


def test_push_pull_delete_and_collect_on_a_bucket(
    s3: S3Server, e2e_operator: Any, kube_client: Any, cluster: Any, make_namespace: Callable[[str], str],
    version: str, tmp_path: Path,
) -> None:
    namespace = make_namespace(f"s3{VERSIONS[version].replace('.', '')}")
    undo = _no_job_pods(cluster, kube_client, namespace)
    reg: DeployedRegistry | None = None
    try:
        reg, bucket = _bucket_registry(s3, cluster, kube_client, e2e_operator, namespace, version, tmp_path)
        # The keys are only referenced: neither in the ConfigMap nor in the pod template.
        config = reg.client.get(ConfigMap, f"{reg.name}-config", namespace=reg.namespace).data["config.yml"]
        assert s3.secret_key not in config and s3.secret_key not in str(reg.deployment())
        reg.start_pod()
        ca, creds = reg.ca_pem(), ("alice", reg.passwords()["alice"])
        gone = ociimage.build(tmp_path / "gone", tag="v1", layers=2, size=256 * 1024)
        kept = ociimage.build(tmp_path / "kept", tag="v1", layers=2, size=256 * 1024)
        crane = Crane(tmp_path / "c1", ca, reg.address, creds)
        ref = f"{reg.address}/e2e/app"
        started = time.monotonic()
        crane.run("push", str(gone.path), f"{ref}:gone")
        crane.run("push", str(kept.path), f"{ref}:kept")
        pushed = time.monotonic() - started
        crane.run("delete", f"{ref}@{gone.manifest_digest}")
        blobs = s3.keys(bucket, f"{ROOT}/docker/registry/v2/blobs/")
        assert _blob_keys(gone.blob_digests) | _blob_keys(kept.blob_digests) <= blobs  # deleting frees nothing

        # Request a collection: the registry rolls to read-only first.
        hash_rw = reg.inputs_hash()
        started = time.monotonic()
        cluster.kubectl("annotate", "registry", reg.name, "-n", reg.namespace, f"{GC_REQUESTED}=e2e", "--overwrite")
        _restart(reg, hash_rw, "read-only")
        hash_ro = reg.inputs_hash()
        job = wait_for(lambda: (j := _job(reg)) and not j["spec"]["suspend"] and j, "the GC Job resumed")
        assert "affinity" not in job["spec"]["template"]["spec"]  # a bucket is reachable from any node
        with pytest.raises(ClientError, match="405|UNSUPPORTED"):
            Crane(tmp_path / "c2", ca, reg.address, creds).run("push", str(kept.path), f"{reg.address}/e2e/app:ro")

        # What the bucket holds, read from versitygw's own directory (object = file): sizes the test trusts.
        blobs_dir = s3.root / bucket / ROOT / "docker" / "registry" / "v2" / "blobs"
        stored = {p: p.stat().st_size for p in blobs_dir.rglob("data") if p.is_file()}
        runs = run_gc_pod(reg, job)
        logs = "\n".join(f"--- {r.container['name']}\n{r.logs()}" for r, _ in runs)
        assert [code for _, code in runs] == [0, 0, 0], logs
        gc_pod = next(r for r, _ in runs if r.container["name"] == "garbage-collect")
        _complete(reg, 0)
        _restart(reg, hash_ro, "read-write after the collection")
        status = wait_for(lambda: (reg.get().get("status") or {}).get("garbageCollection", {}).get("lastResult")
                          and reg.get()["status"]["garbageCollection"], "the recorded result")
        print(f"{version}: pushed 2 images to S3 in {pushed:.2f}s; GC request -> result recorded "
              f"{time.monotonic() - started:.2f}s")
        assert status["lastResult"] == "Succeeded" and status["lastRequest"] == "e2e"
        assert reg.get()["status"]["storage"] == "S3"
        left = {p: p.stat().st_size for p in blobs_dir.rglob("data") if p.is_file()}
        freed = {p: size for p, size in stored.items() if p not in left}
        assert freed and (status["lastBlobsFreed"], status["lastBytesFreed"]) == (len(freed), sum(freed.values()))
        usage = reg.get()["status"]["usage"]
        assert (usage["blobs"], usage["bytes"], usage["repositories"]) == (len(left), sum(left.values()), 1), logs

        blobs = s3.keys(bucket, f"{ROOT}/docker/registry/v2/blobs/")
        assert not _blob_keys(gone.blob_digests) & blobs, gc_pod.logs()
        assert _blob_keys(kept.blob_digests) <= blobs
        manifest = https.request(reg.address, ca, reg.host, "GET", "/v2/e2e/app/manifests/kept", auth=creds,
                                 headers={"Accept": ociimage.MANIFEST})
        assert manifest.status == 200 and ociimage.sha256_digest(manifest.body) == kept.manifest_digest
        for digest in kept.blob_digests:  # passed through the registry (redirect off), byte for byte
            blob = https.request(reg.address, ca, reg.host, "GET", f"/v2/e2e/app/blobs/{digest}", auth=creds)
            assert blob.status == 200
            assert blob.body == (kept.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        ref = f"{reg.address}/e2e/app"  # the pod after the collection
        pulled = tmp_path / "pulled"  # and by a real client, as an OCI layout
        Crane(tmp_path / "c3", ca, reg.address, creds).run("pull", "--format", "oci", f"{ref}:kept", str(pulled))
        for digest in kept.blob_digests:
            path = Path("blobs", "sha256", digest.removeprefix("sha256:"))
            assert (pulled / path).read_bytes() == (kept.path / path).read_bytes()
        Crane(tmp_path / "c4", ca, reg.address, creds).run("push", str(kept.path), f"{ref}:after-gc")  # read-write
    finally:
        if reg is not None:
            reg.stop()
        undo()


def test_replicas_share_the_bucket(
    s3: S3Server, e2e_operator: Any, kube_client: Any, cluster: Any, make_namespace: Callable[[str], str],
    version: str, tmp_path: Path,
) -> None:
    """Two registry pods, one bucket: an image pushed through one pulls byte-identical from the other."""
    namespace = make_namespace(f"s3r{VERSIONS[version].replace('.', '')}")
    reg, _ = _bucket_registry(s3, cluster, kube_client, e2e_operator, namespace, version, tmp_path, replicas=2)
    try:
        assert reg.deployment()["spec"]["replicas"] == 2
        one, two = reg.start_pod(), reg.start_pod()
        ca, creds = reg.ca_pem(), ("alice", reg.passwords()["alice"])
        image = ociimage.build(tmp_path / "img", tag="v1", layers=2, size=256 * 1024)
        Crane(tmp_path / "c1", ca, one.address, creds).run("push", str(image.path), f"{one.address}/e2e/app:v1")
        manifest = https.request(two.address, ca, reg.host, "GET", "/v2/e2e/app/manifests/v1", auth=creds,
                                 headers={"Accept": ociimage.MANIFEST})
        assert manifest.status == 200 and ociimage.sha256_digest(manifest.body) == image.manifest_digest
        for digest in image.blob_digests:
            blob = https.request(two.address, ca, reg.host, "GET", f"/v2/e2e/app/blobs/{digest}", auth=creds)
            assert blob.body == (image.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    finally:
        reg.stop()
