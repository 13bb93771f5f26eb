"""TLS is real and verified against the CA the operator publishes; htpasswd auth admits exactly its users."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from lightkube.resources.core_v1 import Service

from registry_operator import pki
from tests.support import https, ociimage
from tests.support.clients import ClientError, Skopeo
from tests.support.deployed import DeployedRegistry, secret_data


def test_served_certificate_is_the_operators(shared_registry: DeployedRegistry) -> None:
    reg = shared_registry
    ca = reg.ca_pem()
    served, version = https.peer_certificate(reg.address, ca, reg.host)
    assert version in ("TLSv1.2", "TLSv1.3")
    tls = secret_data(reg.client, reg.namespace, f"{reg.name}-tls")
    assert served == x509.load_pem_x509_certificate(tls["tls.crt"])
    dns, ips = https.san_names(served)
    n, ns = reg.name, reg.namespace
    assert {n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local"} <= dns
    assert "127.0.0.1" in ips  # spec.tls.ipAddresses


def test_service_reaches_the_tls_listener_only(shared_registry: DeployedRegistry) -> None:
    """The Service selects the pod and forwards to the TLS port, never to the unauthenticated debug port."""
    reg = shared_registry
    svc = reg.client.get(Service, reg.name, namespace=reg.namespace).to_dict()["spec"]
    labels = reg.deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    assert [reg.runner.host_port(p["targetPort"]) for p in svc["ports"]] == [reg.runner.port]
    assert reg.runner.debug_port is not None and reg.runner.debug_port != reg.runner.port
    https.peer_certificate(reg.address, reg.ca_pem(), reg.host)


def test_certificate_is_verified_not_just_encrypted(shared_registry: DeployedRegistry) -> None:
    """A client trusting another CA, or expecting another name, must fail the handshake."""
    reg = shared_registry
    with pytest.raises(ssl.SSLCertVerificationError):
        https.peer_certificate(reg.address, pki.issue_ca("test CA").cert_pem, reg.host)
    with pytest.raises(ssl.SSLCertVerificationError):
        https.peer_certificate(reg.address, reg.ca_pem(), f"{reg.name}.elsewhere.svc")


def test_plain_http_is_refused(shared_registry: DeployedRegistry) -> None:
    """A cleartext request gets Go's TLS-port answer, never the registry API (no Basic auth challenge)."""
    answer = https.plain_http_exchange(shared_registry.address)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1:2] == [b"400"], answer[:300]
    assert b"HTTPS" in answer
    assert b"www-authenticate" not in answer.lower()
    assert b"docker-distribution-api-version" not in answer.lower()


def test_refuses_missing_or_wrong_credentials(shared_registry: DeployedRegistry) -> None:
    reg = shared_registry
    ca, passwords = reg.ca_pem(), reg.passwords()

    def status(auth: tuple[str, str] | None) -> int:
        return https.request(reg.address, ca, reg.host, "GET", "/v2/", auth=auth).status

    challenge = https.request(reg.address, ca, reg.host, "GET", "/v2/")
    assert challenge.status == 401
    assert challenge.headers["www-authenticate"].lower().startswith("basic ")
    assert status(("alice", passwords["alice"] + "x")) == 401
    assert status(("alice", passwords["bob"])) == 401
    assert status(("mallory", passwords["alice"])) == 401
    assert status(("", "")) == 401
    assert status(("alice", passwords["alice"])) == 200


def test_every_configured_user_gets_in(shared_registry: DeployedRegistry, tmp_path: Path) -> None:
    reg = shared_registry
    ca, passwords = reg.ca_pem(), reg.passwords()
    assert set(passwords) == {"alice", "bob"}
    assert len(set(passwords.values())) == 2 and all(len(p) >= 16 for p in passwords.values())
    skopeo = Skopeo(tmp_path, ca)
    image = ociimage.build(tmp_path / "image", layers=1, size=1024)
    for user, password in passwords.items():
        assert https.request(reg.address, ca, reg.host, "GET", "/v2/", auth=(user, password)).status == 200
        skopeo.copy_to(image.ref, f"docker://{reg.address}/e2e/users-{user}:v1", (user, password))
        assert skopeo.list_tags(f"docker://{reg.address}/e2e/users-{user}", (user, password)) == ["v1"]
    with pytest.raises(ClientError, match="(?i)unauthorized|authentication required"):
        skopeo.list_tags(f"docker://{reg.address}/e2e/users-alice", ("alice", "not-the-password"))
