"""JWT signing in the exact shape distribution 2.8 and 3.x accept.

Both versions verify an ``x5c`` header (standard padded base64 DER, leaf first) against
``auth.token.rootcertbundle``; ``kid`` lookup differs between them (libtrust id vs. JWK
thumbprint), so it is not used. ES256 signatures are raw ``r||s``, not DER.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .config import Algorithm

_MIN_RSA_BITS = 2048


class SigningKeyError(ValueError):
    """Key and certificate do not fit together or do not fit the algorithm."""


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWS compact serialization requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _checked_key(algorithm: Algorithm, key: object) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if algorithm == "ES256":
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        raise SigningKeyError("ES256 needs an EC P-256 private key")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= _MIN_RSA_BITS:
        return key
    raise SigningKeyError(f"RS256 needs an RSA private key of at least {_MIN_RSA_BITS} bits")


class Signer:
    """A private key plus the certificate chain advertised in ``x5c``; the header is encoded once."""

    def __init__(
        self,
        algorithm: Algorithm,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        chain: Sequence[x509.Certificate],
    ) -> None:
        self.algorithm = algorithm
        self.key = key
        self.chain = tuple(chain)
        header = {
            "typ": "JWT",
            "alg": algorithm,
            "x5c": [
                base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii") for cert in self.chain
            ],
        }
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode())

    @classmethod
    def from_pem(cls, algorithm: Algorithm, key_pem: bytes, cert_pem: bytes) -> Signer:
        """Load and cross-check; a mismatched pair would only surface as ``invalid_token`` later."""
        key = _checked_key(algorithm, serialization.load_pem_private_key(key_pem, password=None))
        chain = x509.load_pem_x509_certificates(cert_pem)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if chain[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
            raise SigningKeyError("the signing certificate does not belong to the signing key")
        return cls(algorithm, key, chain)

    @classmethod
    def from_files(cls, algorithm: Algorithm, key_path: str | Path, cert_path: str | Path) -> Signer:
        return cls.from_pem(algorithm, Path(key_path).read_bytes(), Path(cert_path).read_bytes())

    def _signature(self, message: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.key.sign(message, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())

    def sign(self, claims: Mapping[str, object]) -> str:
        """Return the compact JWS for ``claims``."""
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self._header}.{payload}"
        return f"{signing_input}.{b64url(self._signature(signing_input.encode('ascii')))}"
