"""Retention on a real S3 server (versitygw): `python -m registry_operator.prune`, with the operator's
robot$retention credential and the in-use references of a real Pod, against a Registry whose storage is a
bucket, for 2.8 and 3.x.

A bucket has no directories: a repository whose last tag goes leaves no `_manifests/tags/` prefix behind,
which a filesystem keeps as an empty directory. The registry still lists the repository in its catalog, and 2.8
answers its tag list with 404 NAME_UNKNOWN (3.x with no tags): the second run, which must decide the same and
delete nothing, meets a repository without tags.

Two repositories under keepYoungerThan 24h: `e2e/gone` (two old tags: both go, the repository is left without
tags) and `e2e/app` (`old` goes; `pinned`, as old, stays because a Pod names it by digest through the
Service's name; `fresh`, created now, stays by age).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from registry_operator.material import RETENTION_KEY
from registry_operator.robot import RETENTION_USER
from tests.e2e.test_retention_clients import _pod, _protected, _prune
from tests.e2e.test_s3_storage import ROOT, _bucket_registry, s3  # noqa: F401  (s3: the module's S3 server)
from tests.support import ociimage
from tests.support.clients import Crane
from tests.support.deployed import VERSIONS, secret_data
from tests.support.s3server import S3Server

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
OLD = "2026-01-01T00:00:00Z"


def test_retention_on_a_bucket_keeps_in_use_and_young_tags_and_runs_again_clean(
    s3: S3Server, e2e_operator: Any, kube_client: Any, kubeconfig: str, cluster: Any,  # noqa: F811
    make_namespace: Callable[[str], str], version: str, tmp_path: Path,
) -> None:
    namespace = make_namespace(f"s3ret{VERSIONS[version].replace('.', '')}")
    reg, bucket = _bucket_registry(s3, cluster, kube_client, e2e_operator, namespace, version, tmp_path,
                                   garbageCollection={},
                                   retention={"repositories": ["e2e/*"], "keepYoungerThan": "24h"})
    try:
        reg.start_pod()
        crane = Crane(tmp_path / "c", reg.ca_pem(), reg.address, ("alice", reg.passwords()["alice"]))
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        images = {}
        for ref, created in (("gone:a", OLD), ("gone:b", "2026-01-02T00:00:00Z"), ("app:old", OLD),
                             ("app:pinned", "2026-01-03T00:00:00Z"), ("app:fresh", now)):
            images[ref] = ociimage.build(tmp_path / ref.replace(":", "-"), tag="t", layers=1, size=4096,
                                         created=created)
            crane.run("push", str(images[ref].path), f"{reg.address}/e2e/{ref}")
        pod = _pod(namespace, f"{reg.host}:5000/e2e/app@{images['app:pinned'].manifest_digest}")
        kube_client.create(pod)
        protected = _protected(reg, kubeconfig)
        assert protected["digests"] == [f"e2e/app@{images['app:pinned'].manifest_digest}"]
        robot = (RETENTION_USER, secret_data(kube_client, namespace, f"{reg.name}-http-secret")[
            RETENTION_KEY].decode())
        config = {"retention": {"repositories": ["e2e/*"], "keepYoungerThan": "86400s"}, "protected": protected}

        summary, out = _prune(tmp_path, reg, robot, config)
        assert (summary["manifests"], sorted(summary["deletedTags"])) == (
            3, ["e2e/app:old", "e2e/gone:a", "e2e/gone:b"]), out
        assert sorted(crane.run("ls", f"{reg.address}/e2e/app").split()) == ["fresh", "pinned"]
        assert not s3.keys(bucket, f"{ROOT}/docker/registry/v2/repositories/e2e/gone/_manifests/tags/")

        summary, out = _prune(tmp_path, reg, robot, config)  # the same decision: nothing more goes
        assert (summary["manifests"], summary["tags"]) == (0, 0), out
        crane.run("pull", f"{reg.address}/e2e/app@{images['app:pinned'].manifest_digest}",
                  str(tmp_path / "pinned.tar"))
        kube_client.delete(Pod, pod.metadata.name, namespace=namespace)
    finally:
        reg.stop()
