"""Kubernetes ServiceAccounts as registry identities, end to end: tokens the real API server mints (TokenRequest,
as ``kubectl create token --audience <realm>`` does) sent as the password by crane and skopeo, checked by the
token service pod against the keys it reads from that API server with its own automounted token.

The rule names ``<ns>/ci`` of a namespace other than the Registry's. ``ci`` pulls and cannot push; ``other``
(same namespace, no rule) and a ``ci`` token minted for the API server's audience get nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, ServiceAccount, ServiceAccountToken

from tests.support import ociimage
from tests.support.clients import ClientError, Crane, Skopeo
from tests.support.deployed import DeployedRegistry, wait_for
from tests.support.token_clients import ServiceProxy, TokenService, request_token, start_token_service

pytestmark = pytest.mark.e2e

SKOPEO_DENIED = "denied: requested access to the resource is denied"
REFUSED = r"401 Unauthorized|UNAUTHORIZED|unauthorized|invalid username/password"


@dataclass
class AccountRegistry:
    reg: DeployedRegistry
    token: TokenService
    ca: bytes
    accounts_namespace: str
    image: ociimage.OciImage

    def mint(self, account: str, audience: str | None) -> str:
        """A token of ``account`` from the TokenRequest API (the API server's own audience when None)."""
        spec = TokenRequestSpec(audiences=[audience] if audience else [], expirationSeconds=600)
        answer = self.reg.client.create(
            ServiceAccountToken(metadata=ObjectMeta(), spec=spec), account, namespace=self.accounts_namespace
        )
        return answer.status.token


def _pods_can_be_admitted(client: Any, namespace: str) -> Callable[[], bool]:
    """The namespace's ``default`` ServiceAccount and ``kube-root-ca.crt`` exist (kube-controller-manager makes
    them): before that, a pod that mounts its token is not admitted."""

    def check() -> bool:
        try:
            client.get(ServiceAccount, "default", namespace=namespace)
            client.get(ConfigMap, "kube-root-ca.crt", namespace=namespace)
        except Exception:  # noqa: BLE001 - not there yet
            return False
        return True

    return check


@pytest.fixture(scope="module")
def account_registry(
    deploy: Callable[..., DeployedRegistry],
    make_namespace: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AccountRegistry]:
    proxy = ServiceProxy()
    token: TokenService | None = None
    try:
        accounts = make_namespace("ci")
        reg = deploy(
            "3",
            pod=False,
            pod_runner="test_serviceaccount_identity: reads the token service's environment and logs",
            tls={"ipAddresses": ["127.0.0.1"], "dnsNames": ["localhost"]},
            auth={
                "mode": "token",
                "users": [{"name": "admin"}],
                "access": [
                    {"users": ["admin"], "repositories": ["*"], "actions": ["*"]},
                    {"serviceAccounts": [f"{accounts}/ci"], "repositories": ["ci/*"], "actions": ["pull"]},
                ],
                "tokenRealm": f"https://localhost:{proxy.port}/token",
            },
        )
        for name in ("ci", "other"):
            reg.client.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=accounts)))
        wait_for(_pods_can_be_admitted(reg.client, reg.namespace), f"namespace {reg.namespace} admits pods")
        workdir = tmp_path_factory.mktemp(f"accounts-{reg.namespace}")
        token = start_token_service(reg, proxy, workdir)
        reg.start_pod()
        image = ociimage.build(workdir / "image", tag="v1", layers=1, size=64 * 1024)
        Skopeo(workdir, reg.ca_pem()).copy_to(
            image.ref, f"docker://{reg.address}/ci/app:v1", ("admin", reg.passwords()["admin"])
        )
        yield AccountRegistry(reg, token, reg.ca_pem(), accounts, image)
    finally:
        if token is not None:
            token.stop()
        proxy.close()


def test_the_token_pod_mounts_its_own_token_and_the_realm_is_the_audience(account_registry: AccountRegistry) -> None:
    t = account_registry
    config = t.token.config()
    assert config["serviceAccountAudience"] == t.token.realm
    assert config["access"][1]["serviceAccounts"] == [f"{t.accounts_namespace}/ci"]
    assert t.token.runner.template["spec"]["automountServiceAccountToken"] is True
    assert t.token.runner.env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"


def test_a_service_account_token_pulls_with_crane_and_skopeo(account_registry: AccountRegistry, tmp_path: Path) -> None:
    t = account_registry
    started = time.monotonic()
    ci = ("anything", t.mint("ci", t.token.realm))
    crane = Crane(tmp_path, t.ca, t.reg.address, ci)
    assert crane.run("digest", f"{t.reg.address}/ci/app:v1").strip() == t.image.manifest_digest
    skopeo = Skopeo(tmp_path, t.ca)
    skopeo.copy_from(f"docker://{t.reg.address}/ci/app:v1", f"oci:{tmp_path / 'pulled'}:v1", ci)
    assert (tmp_path / "pulled" / "index.json").exists()
    with pytest.raises(ClientError, match=SKOPEO_DENIED):
        skopeo.copy_to(t.image.ref, f"docker://{t.reg.address}/ci/pushed:v1", ci)
    answer = request_token(t.token.realm, t.ca, t.token.host, t.reg.host, ["repository:ci/app:pull,push"], ci)
    assert answer.status == 200
    assert answer.claims()["sub"] == f"system:serviceaccount:{t.accounts_namespace}:ci"
    assert answer.claims()["access"] == [{"type": "repository", "name": "ci/app", "actions": ["pull"]}]
    print(f"service account pulls (crane + skopeo + push refusal): {time.monotonic() - started:.2f}s")
    assert ci[1] not in t.token.runner.logs()


def test_another_account_and_another_audience_get_nothing(account_registry: AccountRegistry, tmp_path: Path) -> None:
    t = account_registry
    other = ("other", t.mint("other", t.token.realm))
    with pytest.raises(ClientError, match=r"401 Unauthorized|UNAUTHORIZED"):
        Crane(tmp_path, t.ca, t.reg.address, other).run("digest", f"{t.reg.address}/ci/app:v1")
    answer = request_token(t.token.realm, t.ca, t.token.host, t.reg.host, ["repository:ci/app:pull"], other)
    assert answer.status == 200 and answer.claims()["access"] == []

    api_audience = ("wrong", t.mint("ci", None))  # what `kubectl create token ci` gives without --audience
    answer = request_token(t.token.realm, t.ca, t.token.host, t.reg.host, ["repository:ci/app:pull"], api_audience)
    assert answer.status == 401
    with pytest.raises(ClientError, match=REFUSED):
        Crane(tmp_path, t.ca, t.reg.address, api_audience).run("digest", f"{t.reg.address}/ci/app:v1")
    logs = t.token.runner.logs()
    assert "refused: minted for another audience" in logs
    assert api_audience[1] not in logs and other[1] not in logs
