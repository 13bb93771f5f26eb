"""Real registry clients (skopeo, crane, the OCI conformance suite), isolated from this machine's config.

Every client trusts exactly the CA it is given and reads no credentials or policy from $HOME or /etc, so a
test passes only because of what the operator published. TLS verification is never turned off.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import read_versions

from .podrunner import CACHE_BIN

SKOPEO = "skopeo"  # Debian's
CRANE = CACHE_BIN / f"crane-{read_versions()['CRANE_VERSION']}" / "crane"
CONFORMANCE = CACHE_BIN / f"oci-conformance-{read_versions()['OCI_CONFORMANCE_VERSION']}" / "conformance.test"


def docker_config(host: str, user: str, password: str) -> dict[str, Any]:
    """A docker ``config.json`` (crane's DOCKER_CONFIG, an imagePullSecret's ``.dockerconfigjson``) for one host."""
    return {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


class ClientError(Exception):
    """A client command failed; ``output`` holds what it printed (the registry's refusal, usually)."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        super().__init__(f"{argv[0]} {argv[1]} exited {returncode}: {output.strip()[-2000:]}")
        self.returncode = returncode
        self.output = output


def _run(argv: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise ClientError([str(a) for a in argv], proc.returncode, proc.stdout + proc.stderr)
    return proc.stdout


def _base_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}


class Skopeo:
    """skopeo with its own policy, registries.conf and cert dir; credentials passed per call."""

    def __init__(self, workdir: Path, ca_pem: bytes) -> None:
        self.dir = workdir / "skopeo"
        self.certs = self.dir / "certs"
        self.certs.mkdir(parents=True)
        (self.certs / "ca.crt").write_bytes(ca_pem)
        self.policy = self.dir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (self.dir / "registries.conf").write_text("")
        (self.dir / "auth.json").write_text("{}")
        self.env = _base_env(self.dir) | {
            "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(self.dir / "auth.json"),
        }

    def _creds(self, flag: str, creds: tuple[str, str] | None) -> list[str]:
        if creds is None:
            return [flag.replace("creds", "no-creds")]
        return [flag, f"{creds[0]}:{creds[1]}"]

    def run(self, *args: str, timeout: float = 120) -> str:
        return _run([SKOPEO, "--policy", str(self.policy), "--tmpdir", str(self.dir), *args], self.env, timeout)

    def copy_to(self, src: str, dest: str, creds: tuple[str, str] | None) -> None:
        """``skopeo copy`` from a local transport (``oci:DIR:TAG``) to ``docker://HOST/REPO:TAG``."""
        self.run(
            "copy", "--retry-times", "0", "--preserve-digests", "--dest-cert-dir", str(self.certs),
            *self._creds("--dest-creds", creds), src, dest,
        )  # fmt: skip

    def copy_from(self, src: str, dest: str, creds: tuple[str, str] | None) -> None:
        self.run(
            "copy", "--retry-times", "0", "--preserve-digests", "--src-cert-dir", str(self.certs),
            *self._creds("--src-creds", creds), src, dest,
        )  # fmt: skip

    def inspect_raw(self, ref: str, creds: tuple[str, str] | None) -> bytes:
        out = self.run("inspect", "--raw", "--retry-times", "0", "--cert-dir", str(self.certs),
                       *self._creds("--creds", creds), ref)  # fmt: skip
        return out.encode()

    def list_tags(self, repo_ref: str, creds: tuple[str, str] | None) -> list[str]:
        out = self.run("list-tags", "--retry-times", "0", "--cert-dir", str(self.certs),
                       *self._creds("--creds", creds), repo_ref)  # fmt: skip
        return json.loads(out)["Tags"]

    def delete(self, ref: str, creds: tuple[str, str] | None) -> None:
        self.run("delete", "--retry-times", "0", "--cert-dir", str(self.certs), *self._creds("--creds", creds), ref)


class Crane:
    """crane with a private DOCKER_CONFIG (auths) and SSL_CERT_FILE holding only the registry's CA."""

    def __init__(self, workdir: Path, ca_pem: bytes, registry: str, creds: tuple[str, str] | None) -> None:
        if not CRANE.exists():
            raise FileNotFoundError(f"{CRANE} is not built")
        self.dir = workdir / f"crane-{creds[0] if creds else 'anonymous'}"
        self.dir.mkdir(parents=True)
        (self.dir / "ca.pem").write_bytes(ca_pem)
        auths = {}
        if creds is not None:
            auths[registry] = {"auth": base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
        (self.dir / "config.json").write_text(json.dumps({"auths": auths}))
        self.env = _base_env(self.dir) | {
            "DOCKER_CONFIG": str(self.dir),
            "SSL_CERT_FILE": str(self.dir / "ca.pem"),
        }

    def run(self, *args: str, timeout: float = 120) -> str:
        return _run([str(CRANE), *args], self.env, timeout)


@dataclass(frozen=True)
class ConformanceResult:
    passed: int
    failed: int
    skipped: int
    failures: tuple[str, ...]
    skips: tuple[str, ...]
    output: str


def run_conformance(
    workdir: Path,
    ca_pem: bytes,
    registry: str,
    creds: tuple[str, str],
    env: dict[str, str],
    timeout: float = 600,
) -> ConformanceResult:
    """Run the OCI distribution-spec conformance suite and count its JUnit test cases.

    ``env`` carries the suite's feature switches (OCI_API_*, OCI_DATA_*, OCI_REPO1/2); the registry, TLS
    mode and credentials are set here. The CA is trusted through SSL_CERT_FILE only (OCI_TLS=enabled). It
    runs in a fresh directory, so no stray oci-conformance.yaml is picked up.
    """
    results = workdir / "conformance"
    results.mkdir(parents=True)
    (results / "ca.pem").write_bytes(ca_pem)
    full_env = _base_env(results) | {
        "SSL_CERT_FILE": str(results / "ca.pem"),
        "OCI_REGISTRY": registry,
        "OCI_TLS": "enabled",
        "OCI_USERNAME": creds[0],
        "OCI_PASSWORD": creds[1],
        "OCI_RESULTS_DIR": str(results),
        **env,
    }
    if not CONFORMANCE.exists():
        raise FileNotFoundError(f"{CONFORMANCE} is not built (hack/build clients)")
    proc = subprocess.run(
        [str(CONFORMANCE)], cwd=results, env=full_env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    junit = results / "junit.xml"
    if not junit.exists():
        raise ClientError([str(CONFORMANCE), "(no junit.xml)"], proc.returncode, output)
    passed, failures, skips = 0, [], []
    for case in ET.parse(junit).getroot().iter("testcase"):
        # The suite records the outcome in a status attribute (passed/skipped/failure/error), not always as
        # child elements; Disabled features count as skipped.
        name, status = case.get("name", "?"), case.get("status")
        if status is None:
            bad = case.find("failure") is not None or case.find("error") is not None
            status = "failure" if bad else "skipped" if case.find("skipped") is not None else "passed"
        if status in ("failure", "error"):
            failures.append(name)
        elif status == "skipped":
            skips.append(name)
        else:
            passed += 1
    return ConformanceResult(passed, len(failures), len(skips), tuple(failures), tuple(skips), output)
