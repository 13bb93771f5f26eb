"""JWT structure and signatures in the shape distribution 2.8 and 3.x accept."""

import base64
import json
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registry_operator.pki import KeyPair, issue_signing
from registry_operator.token.scope import Scope
from registry_operator.token.signing import Signer, SigningKeyError
from registry_operator.token.tokens import issue_token

Verify = Callable[[str, bytes], tuple[dict, dict]]


def _issue(material: KeyPair, algorithm: str, access: list[Scope], subject: str = "alice") -> str:
    signer = Signer.from_pem(algorithm, material.key_pem, material.cert_pem)  # type: ignore[arg-type]
    issued = issue_token(
        signer,
        issuer="iss",
        service="ns/reg",
        subject=subject,
        access=access,
        ttl_seconds=300,
        now=1_700_000_000.7,
    )
    return issued.token


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_token_verifies_and_has_the_claims_distribution_requires(
    algorithm: str, es256: KeyPair, rs256: KeyPair, verify_jwt: Verify
) -> None:
    material = es256 if algorithm == "ES256" else rs256
    access = [
        Scope("repository", "localhost:5000/team-a/app", ("pull", "push")),
        Scope("registry", "catalog", ("*",)),
    ]
    header, claims = verify_jwt(_issue(material, algorithm, access), material.cert_pem)
    assert header["alg"] == algorithm and header["typ"] == "JWT" and "kid" not in header
    assert claims["iss"] == "iss" and claims["sub"] == "alice"
    assert claims["aud"] == "ns/reg"  # a string: 2.8 rejects an array
    assert claims["iat"] == claims["nbf"] == 1_700_000_000 and claims["exp"] == 1_700_000_300
    assert all(type(claims[k]) is int for k in ("exp", "nbf", "iat"))
    assert claims["access"] == [
        {"type": "repository", "name": "localhost:5000/team-a/app", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


def test_x5c_is_standard_padded_base64_der_of_the_certificate(es256: KeyPair) -> None:
    token = _issue(es256, "ES256", [])
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    (leaf,) = header["x5c"]
    assert len(leaf) % 4 == 0 and "-" not in leaf and "_" not in leaf
    der = x509.load_pem_x509_certificate(es256.cert_pem).public_bytes(serialization.Encoding.DER)
    assert base64.b64decode(leaf, validate=True) == der


def test_anonymous_token_has_empty_subject_and_access(es256: KeyPair, verify_jwt: Verify) -> None:
    _, claims = verify_jwt(_issue(es256, "ES256", [], subject=""), es256.cert_pem)
    assert claims["sub"] == "" and claims["access"] == []


def test_jti_is_unique(es256: KeyPair, verify_jwt: Verify) -> None:
    ids = {verify_jwt(_issue(es256, "ES256", []), es256.cert_pem)[1]["jti"] for _ in range(5)}
    assert len(ids) == 5


def test_response_body_fields(es256: KeyPair) -> None:
    signer = Signer.from_pem("ES256", es256.key_pem, es256.cert_pem)
    issued = issue_token(signer, issuer="i", service="s", subject="", access=[], ttl_seconds=60, now=0)
    body = issued.response()
    assert body["token"] == body["access_token"] == issued.token
    assert body["expires_in"] == 60 and body["issued_at"] == "1970-01-01T00:00:00Z"


def test_algorithm_must_fit_the_key(es256: KeyPair, rs256: KeyPair) -> None:
    with pytest.raises(SigningKeyError, match="ES256"):
        Signer.from_pem("ES256", rs256.key_pem, rs256.cert_pem)
    with pytest.raises(SigningKeyError, match="RS256"):
        Signer.from_pem("RS256", es256.key_pem, es256.cert_pem)


def test_certificate_must_belong_to_the_key(es256: KeyPair) -> None:
    other = issue_signing("ES256")
    with pytest.raises(SigningKeyError, match="does not belong"):
        Signer.from_pem("ES256", es256.key_pem, other.cert_pem)


def test_generated_certificate_is_self_signed_and_long_lived(es256: KeyPair) -> None:
    cert = x509.load_pem_x509_certificate(es256.cert_pem)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650
