"""Generation of the token signing key and its self-signed certificate, for the operator.

The certificate is both the ``x5c`` leaf and the registry's ``rootcertbundle``. The registry reads
that bundle only at start, so rotating the key means rolling the registry too: the operator should
generate it once, keep it in a Secret, and put a hash of the certificate into the registry pod
template.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .config import DEFAULT_ISSUER, Algorithm

DEFAULT_VALIDITY_DAYS = 3650
_RSA_BITS = 3072


@dataclass(frozen=True)
class SigningMaterial:
    """PEM bytes for a Secret with keys ``tls.key`` and ``tls.crt``."""

    key_pem: bytes
    cert_pem: bytes


def generate_signing_material(
    algorithm: Algorithm = "ES256",
    common_name: str = DEFAULT_ISSUER,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> SigningMaterial:
    """Create a key for ``algorithm`` and a self-signed certificate over it.

    The certificate's validity is checked by the registry on every token, so it is long-lived and
    back-dated an hour to tolerate clock skew between nodes.
    """
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SigningMaterial(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )
