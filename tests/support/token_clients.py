"""Token-mode helpers: the token service's pod run by podrunner behind a stand-in for its Service, and direct
calls to the token endpoint.

The realm the registry advertises must be fixed before the Registry is created (``spec.auth.tokenRealm``),
but podrunner moves the token service to a free port only when the pod starts. A ``ServiceProxy`` plays
kube-proxy: it binds the realm's port first and forwards each connection to whichever pod currently backs the
Service.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap

from . import https
from .deployed import DeployedRegistry, wait_for
from .podrunner import ApiSources, PodRunner
from .serviceproxy import ServiceProxy


@dataclass
class TokenService:
    """The ``N-token`` Deployment's pod, run by podrunner, reachable through the realm the Registry publishes."""

    registry: DeployedRegistry
    proxy: ServiceProxy
    runner: PodRunner

    @property
    def name(self) -> str:
        return f"{self.registry.name}-token"

    @property
    def host(self) -> str:
        """The token Service's in-cluster name, which its certificate must carry."""
        return f"{self.name}.{self.registry.namespace}.svc"

    @property
    def realm(self) -> str:
        return str((self.registry.get().get("status") or {}).get("tokenRealm") or "")

    @property
    def realm_address(self) -> str:
        """host:port of the realm URL (the proxy's port)."""
        return urllib.parse.urlsplit(self.realm).netloc

    def config_map(self) -> dict[str, str]:
        obj = self.registry.client.get(ConfigMap, self.name, namespace=self.registry.namespace)
        return dict(obj.data or {})

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_map()["config.json"])

    def sync_volumes(self) -> bool:
        """What the kubelet does on its next sync: re-materialize changed Secret/ConfigMap volumes."""
        return self.runner.update()

    def stop(self) -> None:
        self.runner.stop()
        self.proxy.close()


def start_token_service(reg: DeployedRegistry, proxy: ServiceProxy, workdir: Path) -> TokenService:
    """Run the token Deployment the operator rendered and point ``proxy`` (the realm's port) at it."""
    runner = start_token_pod(reg.client, reg.namespace, f"{reg.name}-token", reg.ca_pem(), proxy, workdir)
    return TokenService(reg, proxy, runner)


def start_token_pod(
    client: Client, namespace: str, name: str, ca_pem: bytes, proxy: ServiceProxy, workdir: Path
) -> PodRunner:
    """Run the token Deployment ``name`` (a Registry's ``N-token`` or a RegistryIndex's) behind ``proxy``."""
    deployment = wait_for(lambda: client.get(Deployment, name, namespace=namespace), f"Deployment {namespace}/{name}")
    runner = PodRunner(deployment, ApiSources(client, namespace), workdir)
    runner.start(ca_pem, f"{name}.{namespace}.svc")
    proxy.target = ("127.0.0.1", runner.port)
    return runner


@dataclass
class TokenAnswer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    def claims(self) -> dict[str, Any]:
        """The token's payload (not verified here: the registry is the verifier)."""
        payload = self.body["token"].split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def request_token(
    realm: str,
    ca_pem: bytes,
    server_hostname: str,
    service: str,
    scopes: list[str],
    auth: tuple[str, str] | None,
) -> TokenAnswer:
    """``GET realm?service=..&scope=..`` as a registry client does, verifying TLS for ``server_hostname``."""
    url = urllib.parse.urlsplit(realm)
    query = urllib.parse.urlencode([("service", service), *(("scope", s) for s in scopes)])
    resp = https.request(url.netloc, ca_pem, server_hostname, "GET", f"{url.path}?{query}", auth=auth)
    try:
        body = json.loads(resp.body) if resp.body else {}
    except ValueError:
        body = {"raw": resp.body.decode(errors="replace")}
    return TokenAnswer(resp.status, resp.headers, body)
