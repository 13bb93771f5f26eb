"""Retention with the real registry: `python -m registry_operator.prune` (the step that runs before
garbage-collect) against a Registry the operator deployed, fed the in-use references of a real Pod listed from
the real API server.

Four tags in one repository: `old` (oldest), `pinned` (a Pod in the cluster runs it), and `new` and `alias`
on one digest (newest). keepNewest 1 keeps `new` by rank and `alias` because deleting its digest would remove
`new` too; `pinned` stays because a Pod names it; only `old` goes. A dry run first deletes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.models.core_v1 import Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile
from lightkube.models.core_v1 import SecurityContext as ContainerSecurityContext
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from registry_operator import inuse, pullsecrets, spec
from registry_operator.prune import PASSWORD_ENV, USER_ENV
from tests.support import https, ociimage
from tests.support.clients import Crane
from tests.support.deployed import VERSIONS, DeployedRegistry

pytestmark = pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
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


def test_retention_keeps_newest_in_use_and_shared_digest_tags(
    shared: Callable[[str], DeployedRegistry], kube_client: Any, kubeconfig: str, version: str, tmp_path: Path
) -> None:
    reg = shared(version)  # deleteEnabled
    creds = ("alice", reg.passwords()["alice"])
    repo = f"e2e/retention-{secrets.token_hex(3)}"
    ref = f"{reg.address}/{repo}"
    crane = Crane(tmp_path / "c", reg.ca_pem(), reg.address, creds)
    images = {}
    for name, created in (("old", "2026-01-01T00:00:00Z"), ("pinned", "2026-02-01T00:00:00Z"),
                          ("new", "2026-03-01T00:00:00.123456789Z")):
        images[name] = ociimage.build(tmp_path / name, tag="t", layers=1, size=4096, created=created)
        crane.run("push", str(images[name].path), f"{ref}:{name}")
    crane.run("tag", f"{ref}:new", "alias")
    restricted = ContainerSecurityContext(allowPrivilegeEscalation=False, capabilities=Capabilities(drop=["ALL"]))
    pod = Pod(metadata=ObjectMeta(name=f"uses-pinned-{secrets.token_hex(2)}", namespace=reg.namespace),
              spec=PodSpec(containers=[Container(name="app", image=f"{ref}:pinned", securityContext=restricted)],
                           securityContext=PodSecurityContext(runAsNonRoot=True, seccompProfile=SeccompProfile(
                               type="RuntimeDefault"))))
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
