"""Shared set-up for the token benchmarks and the real-registry check: a throw-away token service
(config, htpasswd, signing key in a temp dir) run as a subprocess on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bcrypt

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "operator"))

from registry_operator.pki import issue_signing  # noqa: E402
from registry_operator.token import build_config  # noqa: E402
from registry_operator.token.config import Algorithm  # noqa: E402

SERVICE = "bench/registry"
ISSUER = "registry-token-service"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
ACCESS = [
    {"users": ["alice"], "repositories": ["team-a/*"], "actions": ["*"], "catalog": True},
    {"users": ["bob"], "repositories": ["team-a/*"], "actions": ["pull"]},
    {"users": ["alice"], "repositories": ["public/*"], "actions": ["pull", "push"]},
    {"anonymous": True, "repositories": ["public/*"], "actions": ["pull"]},
]


def joined_services(count: int) -> list[str]:
    """The audiences of ``count`` Registries joined to one index (their ``auth.token.service``)."""
    return [f"reg{i}.bench.svc:5000" for i in range(count)]


def per_registry_access(services: Sequence[str]) -> list[dict[str, Any]]:
    """A rule per registry (as an index renders ``registries: [name]``) ahead of the shared :data:`ACCESS`.

    The same builder serves the one-registry case, so both token services walk their own rule plus the same
    shared ones per request: what differs is only the index's other registries' rules and audiences.
    """
    own = [
        {"users": ["alice"], "services": [s], "repositories": [f"reg{i}/*"], "actions": ["pull", "push"]}
        for i, s in enumerate(services)
    ]
    return [*own, *ACCESS]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def write_service_files(
    directory: Path,
    algorithm: Algorithm = "ES256",
    bcrypt_cost: int = 10,
    service: str | Sequence[str] = SERVICE,
    access: Sequence[Mapping[str, Any]] = ACCESS,
) -> Path:
    """Everything the operator would mount; returns the config path. Signing cert: ``signing.crt``.

    ``service``: one audience (a Registry's own token service) or a list (an index's joined registries)."""
    material = issue_signing(algorithm)
    (directory / "signing.key").write_bytes(material.key_pem)
    (directory / "signing.crt").write_bytes(material.cert_pem)
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(bcrypt_cost)).decode()}" for u, p in USERS.items()]
    (directory / "htpasswd").write_text("\n".join(lines) + "\n")
    # No metrics listener: its fixed port (0.0.0.0:5002) would keep two services from running side by side.
    config = build_config(service, access, issuer=ISSUER, algorithm=algorithm, tls=False, metrics_listen=None)
    config.update(
        htpasswdPath=str(directory / "htpasswd"),
        signingKeyPath=str(directory / "signing.key"),
        signingCertPath=str(directory / "signing.crt"),
    )
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_token_service(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator"), "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "registry_operator.token", "--config", str(config_path)]
    process = subprocess.Popen([*command, "--listen", f"127.0.0.1:{port}"], env=env)
    wait_for_port(port)
    return process


def http(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
