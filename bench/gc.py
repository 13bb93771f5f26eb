"""Garbage collection: how long pushes are refused (the read-only window) and how long collecting takes, on a
filesystem and on S3 (versitygw over a directory), with the real registry binary run directly.

One collection as the operator runs it, minus Kubernetes (no rollout, no scheduling, no probes: a floor for
the window a cluster sees): the read-write registry stops, a read-only one starts, the GC Job's steps run one
after the other (`storageusage --save`, `registry garbage-collect`, `storageusage --before`: the measurement
that status reports), the read-only registry stops and a read-write one starts and listens again. The window
runs from the read-write registry's stop to the new one listening. The storage holds `blobs` blobs of `mib`
MiB in all: images of 9 random layers and a config each, pushed through the registry API; half of the images
are deleted by digest first, so half of the data is garbage. Needs the pinned distribution v3 and, for S3,
versitygw (`hack/build s3`; the S3 row is left out without it).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.podrunner import DISTRIBUTION_3, free_port
from tests.support.s3server import VERSITYGW, S3Server

from .datapath import _wait_port
from .paths import OPERATOR_DIR

LAYERS = 9  # per image, plus its config blob
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _config(storage: dict[str, Any], port: int, read_only: bool) -> dict[str, Any]:
    return {"version": 0.1, "log": {"level": "warn"}, "http": {"addr": f"127.0.0.1:{port}"},
            "storage": {**storage, "delete": {"enabled": True},
                        "maintenance": {"readonly": {"enabled": read_only}, "uploadpurging": {"enabled": False}}}}


class _Registry:
    """The registry binary on one storage; `serve` and `collect` as a pod and the GC Job would run it."""

    def __init__(self, workdir: Path, storage: dict[str, Any], env: dict[str, str]) -> None:
        self.workdir, self.storage, self.port = workdir, storage, free_port()
        self.env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none", "REGISTRY_HTTP_SECRET": "bench", **env}
        self.process: subprocess.Popen[bytes] | None = None

    def config_file(self, read_only: bool) -> Path:
        path = self.workdir / f"config-{'ro' if read_only else 'rw'}.yml"
        path.write_text(yaml.safe_dump(_config(self.storage, self.port, read_only)))
        return path

    def serve(self, read_only: bool) -> None:
        log = self.workdir / "registry.log"
        with open(log, "ab") as out:
            argv = [str(DISTRIBUTION_3), "serve", str(self.config_file(read_only))]
            self.process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process, log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def step(self, argv: list[str]) -> None:
        """Run one GC Job step to its end; raise if it fails."""
        done = subprocess.run(argv, env={**self.env, "PYTHONPATH": str(OPERATOR_DIR)}, capture_output=True,
                              timeout=3600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[:4]} exited {done.returncode}: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    def push_blob(self, repo: str, data: bytes) -> str:
        """A monolithic upload (POST, then PUT with the digest): one round trip per blob after the first."""
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        location = started.headers["Location"]
        location = location.split("127.0.0.1:" + str(self.port), 1)[-1]
        put = self.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", data,
                           {"Content-Type": "application/octet-stream"})
        if put.status != 201:
            raise RuntimeError(f"blob upload answered {put.status}")
        return digest


def _push_images(reg: _Registry, images: int, layer_size: int) -> list[str]:
    """`images` images of LAYERS random layers and a config each; their manifest digests."""
    out = []
    for i in range(images):
        layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": layer_size,
                   "digest": reg.push_blob("bench/gc", os.urandom(layer_size))} for _ in range(LAYERS)]
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": secrets.token_hex(8)}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": layers, "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
            "digest": reg.push_blob("bench/gc", config)}}).encode()
        put = reg.request("PUT", f"/v2/bench/gc/manifests/i{i}", manifest, {"Content-Type": MANIFEST})
        if put.status != 201:
            raise RuntimeError(f"manifest push answered {put.status}")
        out.append(f"sha256:{hashlib.sha256(manifest).hexdigest()}")
    return out


def _collect(reg: _Registry) -> dict[str, Any]:
    """One collection as the operator runs it; its timings and what the usage steps measured."""
    usage = [sys.executable, "-m", "registry_operator.storageusage", "--config", str(reg.config_file(True))]
    before, summary = reg.workdir / "usage-before.json", reg.workdir / "usage-summary.json"
    marks = [time.monotonic()]
    reg.stop()
    reg.serve(read_only=True)
    marks.append(time.monotonic())
    reg.step([*usage, "--save", str(before)])
    marks.append(time.monotonic())
    reg.step([str(DISTRIBUTION_3), "garbage-collect", str(reg.config_file(True))])
    marks.append(time.monotonic())
    reg.step([*usage, "--before", str(before), "--termination-log", str(summary)])
    marks.append(time.monotonic())
    reg.stop()
    reg.serve(read_only=False)
    marks.append(time.monotonic())
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {"window": marks[-1] - marks[0], "to_read_only": steps[0], "measure_before": steps[1],
            "collect": steps[2], "measure_after": steps[3], "to_read_write": steps[4],
            "measured": json.loads(summary.read_text())}


def _one(name: str, workdir: Path, storage: dict[str, Any], env: dict[str, str], blobs: int, mib: int,
         log: Callable[[str], None]) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    images = max(2, blobs // (LAYERS + 1))
    layer_size = mib * 2**20 // (images * LAYERS)
    reg = _Registry(workdir, storage, env)
    reg.serve(read_only=False)
    try:
        started = time.monotonic()
        digests = _push_images(reg, images, layer_size)
        pushed = time.monotonic() - started
        log(f"gc/{name}: pushed {images} images ({images * (LAYERS + 1)} blobs, {images * LAYERS * layer_size >> 20}"
            f" MiB) in {pushed:.1f} s; deleting half, then collecting")
        for digest in digests[: images // 2]:
            if reg.request("DELETE", f"/v2/bench/gc/manifests/{digest}").status != 202:
                raise RuntimeError("manifest delete refused")
        result = _collect(reg)
        if reg.request("GET", f"/v2/bench/gc/manifests/i{images - 1}", headers={"Accept": MANIFEST}).status != 200:
            raise RuntimeError("the kept image does not pull after the collection")
    finally:
        reg.stop()
    return {"images": images, "blobs": images * (LAYERS + 1), "bytes": images * LAYERS * layer_size,
            "push": pushed, **result}


def run(workdir: Path, blobs: int, mib: int, log: Callable[[str], None]) -> dict[str, Any]:
    """{"filesystem": {...}, "s3": {...}} (s3 only when versitygw is built)."""
    out = {"filesystem": _one("filesystem", workdir / "fs", {"filesystem": {"rootdirectory": str(workdir / "fs-data")}},
                              {}, blobs, mib, log)}
    if not VERSITYGW.exists():
        log(f"gc/s3: skipped, {VERSITYGW} is not built (hack/build s3)")
        return out
    s3 = S3Server.start(workdir / "s3")
    try:
        s3.create_bucket("bench-gc")
        storage = {"s3": {"bucket": "bench-gc", "region": "us-east-1", "regionendpoint": s3.endpoint,
                          "forcepathstyle": True, "secure": False, "v4auth": True, "rootdirectory": "/bench"}}
        env = {"REGISTRY_STORAGE_S3_ACCESSKEY": s3.access_key, "REGISTRY_STORAGE_S3_SECRETKEY": s3.secret_key}
        out["s3"] = _one("s3", workdir / "s3-registry", storage, env, blobs, mib, log)
    finally:
        s3.stop()
    return out
