"""Certificates: SANs, chain, key match, validity, reuse."""

import datetime as dt

import pytest
from cryptography import x509

from registry_operator import pki


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.issue_ca("test CA")


def test_ca_is_a_constrained_ca(ca):
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert pki.ca_renewal_reason(ca) is None
    assert pki.ca_renewal_reason(None) == "the CA key pair is missing"


def test_server_certificate_names_chain_and_key(ca):
    names = ["reg", "reg.ns", "reg.ns.svc", "reg.ns.svc.cluster.local", "127.0.0.1"]
    server = pki.issue_server(ca, names)
    chain = pki.load_chain(server.cert_pem)
    assert len(chain) == 2 and chain[1] == x509.load_pem_x509_certificate(ca.cert_pem)
    leaf = chain[0]
    assert pki.sans(leaf) == set(names)
    assert pki.signed_by(leaf, x509.load_pem_x509_certificate(ca.cert_pem))
    assert pki.key_matches(leaf, server.key_pem)
    assert pki.server_renewal_reason(server, [ca.cert_pem], names) is None


def test_server_certificate_is_reissued_for_other_names_or_another_ca(ca):
    server = pki.issue_server(ca, ["a", "b"])
    assert "names differ" in pki.server_renewal_reason(server, [ca.cert_pem], ["a", "b", "c"])
    other = pki.issue_ca("other").cert_pem
    assert "not signed by a published CA" in pki.server_renewal_reason(server, [other], ["a", "b"])
    # During a CA rotation both CAs are published: the certificate the old one issued is kept.
    assert pki.server_renewal_reason(server, [other, ca.cert_pem], ["a", "b"]) is None
    later = pki.now() + dt.timedelta(days=300)
    assert pki.server_renewal_reason(server, [ca.cert_pem], ["a", "b"], at=later) == (
        "the server certificate is due for renewal")


def test_renewal_after_two_thirds_of_the_lifetime(ca):
    leaf = pki.load_chain(pki.issue_server(ca, ["a"], validity=dt.timedelta(days=90)).cert_pem)[0]
    start = leaf.not_valid_before_utc
    assert not pki.needs_renewal(leaf, at=start + dt.timedelta(days=59))
    assert pki.needs_renewal(leaf, at=start + dt.timedelta(days=61))


def test_check_pair_rejects_mismatch_expiry_and_garbage(ca):
    one, two = pki.issue_server(ca, ["a"]), pki.issue_server(ca, ["a"])
    with pytest.raises(pki.CertificateError) as err:
        pki.check_pair(one.cert_pem, two.key_pem)
    assert err.value.reason == "KeyMismatch"
    later = pki.now() + dt.timedelta(days=400)
    with pytest.raises(pki.CertificateError) as err:
        pki.check_pair(one.cert_pem, one.key_pem, at=later)
    assert err.value.reason == "CertificateExpired"
    with pytest.raises(pki.CertificateError) as err:
        pki.check_pair(b"not a certificate", one.key_pem)
    assert err.value.reason == "CertificateMalformed"
    with pytest.raises(pki.CertificateError) as err:
        pki.check_pair(one.cert_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert err.value.reason == "PrivateKeyMalformed"


def test_error_messages_never_quote_key_material(ca):
    pair = pki.issue_server(ca, ["a"])
    try:
        pki.check_pair(pair.cert_pem, pair.key_pem[:-40])
    except pki.CertificateError as exc:
        assert "PRIVATE KEY" not in str(exc) and pair.key_pem.decode()[30:60] not in str(exc)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_signing_certificate_matches_its_algorithm(algorithm):
    pair = pki.issue_signing(algorithm)
    assert pki.signing_renewal_reason(pair, algorithm) is None
    other = "RS256" if algorithm == "ES256" else "ES256"
    assert pki.signing_renewal_reason(pair, other) == f"tokenAlgorithm is {other}"


def test_split_gives_each_certificate_of_a_bundle(ca):
    other = pki.issue_ca("other").cert_pem
    assert pki.split(ca.cert_pem + other) == [ca.cert_pem, other]
    assert pki.split(b"garbage") == []
