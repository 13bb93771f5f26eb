"""One RegistryIndex, two real registries (distribution 2.8 as `dev`, 3.x as `prod`) joined to it, their pods
and the index's token-service pod run by podrunner, and real clients (skopeo, crane).

One login works on both registries where the index's rules allow; push on `prod` is granted to `ci` only; a
token issued for `dev` (its audience) is refused by `prod`. As in test_token.py the realm is
``https://localhost:<port>/token`` (the index's ``tokenRealm``), served through a ``ServiceProxy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client

from registry_operator.kinds import RegistryIndex
from tests.support import https, ociimage
from tests.support.clients import ClientError, Crane, Skopeo
from tests.support.deployed import DeployedRegistry, create_registry, secret_data, wait_for
from tests.support.podrunner import PodRunner
from tests.support.token_clients import ServiceProxy, request_token, start_token_pod

pytestmark = pytest.mark.e2e

SKOPEO_DENIED = "denied: requested access to the resource is denied"
CRANE_DENIED = r"401 Unauthorized|UNAUTHORIZED: authentication required"
ACCESS = [
    {"users": ["ci"], "registries": ["prod"], "repositories": ["*"], "actions": ["pull", "push"]},
    {"users": ["alice", "ci"], "registries": ["dev"], "repositories": ["*"], "actions": ["pull", "push"]},
    {"users": ["alice"], "repositories": ["*"], "actions": ["pull"]},
]
JOIN = {"tls": {"ipAddresses": ["127.0.0.1"], "dnsNames": ["localhost"]},
        "auth": {"mode": "token", "indexRef": {"name": "idx"}}}

INDEX = "test_index_clients: the index's token service, in the same namespace, is a local process"


@dataclass
class Joined:
    dev: DeployedRegistry  # distribution 2.8
    prod: DeployedRegistry  # distribution 3.x
    realm: str
    index_ca: bytes
    passwords: dict[str, str]
    image: ociimage.OciImage

    def creds(self, user: str) -> tuple[str, str]:
        return user, self.passwords[user]


def _index_status(client: Client, namespace: str) -> dict:
    return client.get(RegistryIndex, "idx", namespace=namespace).to_dict().get("status") or {}


@pytest.fixture(scope="module")
def joined(
    e2e_operator: object, kube_client: Client, cluster: Any, make_namespace: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Joined]:
    namespace = make_namespace("index")
    workdir = tmp_path_factory.mktemp("index")
    proxy = ServiceProxy()
    runners: list[PodRunner] = []
    registries: list[DeployedRegistry] = []
    try:
        cluster.apply(yaml.safe_dump({
            "apiVersion": "registry.operator.dev/v1alpha1", "kind": "RegistryIndex",
            "metadata": {"name": "idx", "namespace": namespace},
            "spec": {"users": [{"name": "alice"}, {"name": "ci"}], "access": ACCESS,
                     "tokenRealm": f"https://localhost:{proxy.port}/token",
                     "tls": {"ipAddresses": ["127.0.0.1"], "dnsNames": ["localhost"]}},
        }))
        for name, version in (("dev", "2.8"), ("prod", "3")):
            registries.append(create_registry(kube_client, namespace, name, {"version": version, **JOIN},
                                              tmp_path_factory.mktemp(f"index-{name}"),
                                              pod_runner=INDEX))
        wait_for(lambda: _index_status(kube_client, namespace).get("registryCount") == 2, "index lists 2 Registries")
        index_ca = secret_data(kube_client, namespace, "idx-ca")["ca.crt"]
        runners.append(start_token_pod(kube_client, namespace, "idx-token", index_ca, proxy,
                                       tmp_path_factory.mktemp("index-token")))
        for reg in registries:
            reg.start_pod()
        passwords = {k: v.decode() for k, v in secret_data(kube_client, namespace, "idx-passwords").items()}
        image = ociimage.build(workdir / "image", tag="v1", layers=1, size=64 * 1024)
        yield Joined(*registries, f"https://localhost:{proxy.port}/token", index_ca, passwords, image)
    finally:
        for reg in registries:
            reg.stop()
        for runner in runners:
            runner.stop()
        proxy.close()


def test_registries_trust_the_index_and_challenge_with_their_own_service(joined: Joined) -> None:
    for reg in (joined.dev, joined.prod):
        ca = reg.ca_pem()
        assert joined.index_ca in ca  # the Registry's published bundle lets clients trust the realm too
        challenge = https.request(reg.address, ca, reg.host, "GET", "/v2/")
        assert challenge.status == 401
        assert challenge.headers["www-authenticate"] == f'Bearer realm="{joined.realm}",service="{reg.host}"'
        assert reg.get()["status"]["index"] == "idx"


def test_one_login_on_both_registries_where_rules_allow(joined: Joined, tmp_path: Path) -> None:
    j = joined
    alice, ci = j.creds("alice"), j.creds("ci")
    dev_skopeo, prod_skopeo = Skopeo(tmp_path / "dev", j.dev.ca_pem()), Skopeo(tmp_path / "prod", j.prod.ca_pem())
    dev, prod = f"docker://{j.dev.address}", f"docker://{j.prod.address}"

    dev_skopeo.copy_to(j.image.ref, f"{dev}/app:v1", alice)  # alice pushes on dev
    assert dev_skopeo.list_tags(f"{dev}/app", ci) == ["v1"]
    prod_skopeo.copy_to(j.image.ref, f"{prod}/app:v1", ci)  # push on prod: ci only
    with pytest.raises(ClientError, match=SKOPEO_DENIED):
        prod_skopeo.copy_to(j.image.ref, f"{prod}/app:v2", alice)
    prod_skopeo.copy_from(f"{prod}/app:v1", f"oci:{tmp_path / 'pulled'}:v1", alice)  # alice pulls everywhere
    pulled = json.loads((tmp_path / "pulled" / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == j.image.manifest_digest

    # The same through go-containerregistry, one login per registry with the same password.
    crane_prod = Crane(tmp_path / "crane-prod", j.prod.ca_pem(), j.prod.address, alice)
    assert crane_prod.run("digest", f"{j.prod.address}/app:v1").strip() == j.image.manifest_digest
    with pytest.raises(ClientError, match=CRANE_DENIED):
        crane_prod.run("push", str(j.image.path), f"{j.prod.address}/app:crane")
    crane_dev = Crane(tmp_path / "crane-dev", j.dev.ca_pem(), j.dev.address, alice)
    crane_dev.run("push", str(j.image.path), f"{j.dev.address}/app:crane")


def test_a_token_for_one_registry_is_refused_by_the_other(joined: Joined) -> None:
    """A token for dev works on dev and is refused by prod (3.x), and the other way round (2.8)."""
    j = joined
    scope = ["repository:app:pull"]
    for issued_for, other in ((j.dev, j.prod), (j.prod, j.dev)):
        answer = request_token(j.realm, j.index_ca, f"idx-token.{j.dev.namespace}.svc", issued_for.host, scope,
                               j.creds("alice"))
        assert answer.status == 200, answer.body
        assert answer.claims()["aud"] == issued_for.host and answer.claims()["access"][0]["actions"] == ["pull"]
        bearer = {"Authorization": f"Bearer {answer.body['token']}"}
        for reg, status in ((issued_for, 200), (other, 401)):
            got = https.request(reg.address, reg.ca_pem(), reg.host, "GET", "/v2/app/tags/list", headers=bearer)
            assert got.status == status, (issued_for.name, reg.name, got.status, got.body)
        assert 'error="invalid_token"' in got.headers["www-authenticate"], got.headers
    unknown = request_token(j.realm, j.index_ca, f"idx-token.{j.dev.namespace}.svc", "other.ns.svc", scope,
                            j.creds("alice"))
    assert unknown.status == 400, unknown.body
