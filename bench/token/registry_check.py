"""Proof against real registries: distribution 2.8 (Debian's docker-registry) and 3.x accept the
service's tokens for /v2/, push, pull, tag list and catalog, and reject what the rules deny.

Usage: python bench/token/registry_check.py [--algorithm ES256|RS256] [REGISTRY_BINARY ...]
Defaults to /usr/bin/docker-registry and .cache/bin/distribution-*/registry when present.
Prints each step and the registry config used; exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ISSUER,
    REPO_ROOT,
    SERVICE,
    USERS,
    free_port,
    http,
    start_token_service,
    stop,
    wait_for_port,
    write_service_files,
)

from registry_operator.pki import issue_signing
from registry_operator.token.scope import Scope
from registry_operator.token.signing import Signer
from registry_operator.token.tokens import issue_token

# The realm names a host, not an IP literal: go-containerregistry (crane, ko, ...) refuses a realm
# whose host is a private or loopback IP unless it equals the registry's own host:port.
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: bench-not-secret
auth:
  token:
    realm: http://localhost:{token_port}/token
    service: {service}
    issuer: {issuer}
    rootcertbundle: {rootcertbundle}
"""


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()}


class Client:
    """The docker token dance: on a Bearer challenge, fetch a token for the challenged scope."""

    def __init__(self, base: str, user: str | None) -> None:
        self.base, self.user = base, user

    def token(self, realm: str, service: str, scope: str | None) -> str:
        query = f"?service={service}" + (f"&scope={scope}" if scope else "")
        status, _, body = http("GET", realm + query, basic(self.user) if self.user else {})
        assert status == 200, (status, body)
        return str(json.loads(body)["token"])

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        url = path if path.startswith("http") else self.base + path
        status, response_headers, data = http(method, url, headers, body)
        challenge = response_headers.get("Www-Authenticate") or response_headers.get("WWW-Authenticate", "")
        if status != 401 or not challenge.startswith("Bearer "):
            return status, response_headers, data
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        token = self.token(params["realm"], params["service"], params.get("scope"))
        return http(method, url, {**(headers or {}), "Authorization": f"Bearer {token}"}, body)


def push(client: Client, repository: str, tag: str) -> int:
    """Monolithic blob uploads plus an OCI manifest; returns the manifest PUT status."""
    config = b"{}"
    layer = os.urandom(1024)
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        status, headers, _ = client.request("POST", f"/v2/{repository}/blobs/uploads/")
        if status != 202:
            return status
        location = headers["Location"]
        separator = "&" if "?" in location else "?"
        url = location if location.startswith("http") else client.base + location
        status, _, _ = client.request(
            "PUT", f"{url}{separator}digest={digest}", blob, {"Content-Type": "application/octet-stream"}
        )
        if status != 201:
            return status
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(config),
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "size": len(layer),
                "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
            }
        ],
    }
    status, _, _ = client.request(
        "PUT",
        f"/v2/{repository}/manifests/{tag}",
        json.dumps(manifest).encode(),
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    return status


def check_registry(binary: str, algorithm: str, workdir: Path) -> list[str]:
    config_path = write_service_files(workdir, algorithm, bcrypt_cost=5)  # type: ignore[arg-type]
    token_port, port = free_port(), free_port()
    registry_config = REGISTRY_CONFIG.format(
        storage=workdir / "storage",
        port=port,
        token_port=token_port,
        service=SERVICE,
        issuer=ISSUER,
        rootcertbundle=workdir / "signing.crt",
    )
    (workdir / "registry.yml").write_text(registry_config)
    print(f"--- {binary} ({algorithm}) config:\n{registry_config}")
    failures: list[str] = []
    token_service = start_token_service(config_path, token_port)
    log = (workdir / "registry.log").open("wb")
    registry = subprocess.Popen(
        [binary, "serve", str(workdir / "registry.yml")],
        stdout=log,
        stderr=log,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    )
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        alice, bob, anonymous = Client(base, "alice"), Client(base, "bob"), Client(base, None)

        def expect(what: str, got: int, want: int) -> None:
            ok = got == want
            print(f"{'ok  ' if ok else 'FAIL'} {what}: {got} (want {want})")
            if not ok:
                failures.append(f"{binary} {algorithm}: {what}: {got} != {want}")

        expect("GET /v2/ without token", http("GET", base + "/v2/")[0], 401)
        expect("GET /v2/ as alice", alice.request("GET", "/v2/")[0], 200)
        expect("push team-a/app:v1 as alice", push(alice, "team-a/app", "v1"), 201)
        status, _, body = bob.request("GET", "/v2/team-a/app/tags/list")
        expect("tag list team-a/app as bob (pull)", status, 200)
        print(f"     tags: {json.loads(body).get('tags') if status == 200 else body[:200]!r}")
        expect(
            "pull manifest as bob",
            bob.request(
                "GET", "/v2/team-a/app/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
            )[0],
            200,
        )
        expect("push as bob (pull only)", push(bob, "team-a/app", "v2"), 401)
        expect("tag list as anonymous", anonymous.request("GET", "/v2/team-a/app/tags/list")[0], 401)
        expect("push public/lib:v1 as alice", push(alice, "public/lib", "v1"), 201)
        expect("tag list public/lib as anonymous", anonymous.request("GET", "/v2/public/lib/tags/list")[0], 200)
        expect("push public/lib as anonymous", push(anonymous, "public/lib", "v2"), 401)
        expect("catalog as alice", alice.request("GET", "/v2/_catalog")[0], 200)
        expect("catalog as bob", bob.request("GET", "/v2/_catalog")[0], 401)
        other = issue_signing(algorithm)  # type: ignore[arg-type]
        foreign = Signer.from_pem(algorithm, other.key_pem, other.cert_pem)  # type: ignore[arg-type]
        forged = issue_token(
            foreign,
            issuer=ISSUER,
            service=SERVICE,
            subject="alice",
            ttl_seconds=300,
            access=[Scope("repository", "team-a/app", ("pull",))],
        ).token
        expect(
            "token signed by another key",
            http("GET", base + "/v2/team-a/app/tags/list", {"Authorization": f"Bearer {forged}"})[0],
            401,
        )
    finally:
        stop(registry)
        stop(token_service)
        log.close()
    return failures


def default_binaries() -> list[str]:
    found = [str(p) for p in sorted((REPO_ROOT / ".cache/bin").glob("distribution-*/registry"))]
    return (["/usr/bin/docker-registry"] if Path("/usr/bin/docker-registry").exists() else []) + found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=["ES256", "RS256"], action="append")
    parser.add_argument("binaries", nargs="*")
    args = parser.parse_args()
    binaries = args.binaries or default_binaries()
    if not binaries:
        print("no registry binary found; pass one")
        return 2
    failures = []
    for binary in binaries:
        for algorithm in args.algorithm or ["ES256", "RS256"]:
            with tempfile.TemporaryDirectory(prefix="token-check-") as directory:
                failures += check_registry(binary, algorithm, Path(directory))
    print("\n".join(["", f"{len(failures)} failed checks", *failures]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
