"""Certificates: a per-Registry CA, server certificates it issues, and checks of user-supplied ones.

Issuing is the only expensive, random step here; every other function only reads PEM so that `material` can
decide cheaply whether what already exists is still good (which is what keeps a settled reconcile free of
writes and pods from rolling for nothing).

Error messages never quote key material: they name what is wrong, not what was given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
SIGNING_VALIDITY = dt.timedelta(days=3650)
# Re-issue once less than a third of the lifetime is left, like cert-manager's default.
RENEW_FRACTION = 1 / 3
BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between operator and clients


class CertificateError(ValueError):
    """User-supplied TLS material is unusable; `reason` is a stable CamelCase word for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, key_cert_sign=cert_sign, crl_sign=cert_sign, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
        decipher_only=False,
    )


def _self_signed(key: PrivateKeyTypes, common_name: str, validity: dt.timedelta) -> x509.Certificate:
    """A self-signed root that may sign leaves only (path length 0)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    start = now() - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_ca(common_name: str) -> KeyPair:
    """The per-Registry CA that issues server certificates."""
    key = _new_key()
    cert = _self_signed(key, common_name, CA_VALIDITY)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server(ca: KeyPair, names: list[str], validity: dt.timedelta = SERVER_VALIDITY) -> KeyPair:
    """A TLS server certificate for `names` (DNS names and IP addresses), signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = _new_key()
    start = now() - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # The full chain (leaf, then CA) so clients that only know the root can still build the path.
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem, _key_pem(key))


def load_chain(cert_pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError("CertificateMalformed", "tls.crt is not a PEM certificate") from None
    return chain


def _load_key(key_pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError("PrivateKeyMalformed", "tls.key is not an unencrypted PEM private key") from None


def key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    public = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = _load_key(key_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public == mine


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key verifies `cert`'s signature (EC or RSA)."""
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(
                cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(ext.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def needs_renewal(cert: x509.Certificate, at: dt.datetime | None = None) -> bool:
    at = at or now()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - at < lifetime * RENEW_FRACTION


def check_pair(cert_pem: bytes, key_pem: bytes, at: dt.datetime | None = None) -> x509.Certificate:
    """Validate a user-supplied certificate and key; return the leaf or raise `CertificateError`."""
    chain = load_chain(cert_pem)
    leaf = chain[0]
    if not key_matches(leaf, key_pem):
        raise CertificateError("KeyMismatch", "tls.key does not belong to the certificate in tls.crt")
    at = at or now()
    if leaf.not_valid_after_utc <= at:
        raise CertificateError(
            "CertificateExpired", f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}"
        )
    if leaf.not_valid_before_utc > at + BACKDATE:
        raise CertificateError(
            "CertificateNotYetValid", f"the certificate is valid only from {leaf.not_valid_before_utc.isoformat()}"
        )
    return leaf


def _checked(pair: KeyPair | None, what: str, at: dt.datetime | None) -> x509.Certificate | str:
    """The certificate of `pair` if it passes `check_pair`, else why not (the start of every renewal policy)."""
    if pair is None:
        return f"the {what} is missing"
    try:
        return check_pair(pair.cert_pem, pair.key_pem, at)
    except CertificateError as exc:
        return f"the {what} is unusable ({exc.reason})"


def server_renewal_reason(
    pair: KeyPair | None, trusted: Sequence[bytes], names: list[str], at: dt.datetime | None = None
) -> str | None:
    """Why an issued server certificate must be re-issued, or None to keep it (cert-manager's policy checks).

    `trusted`: the CA certificates clients are told to trust; a certificate signed by any of them is kept, so
    a CA rotation alone does not roll the pods while the old CA is still published.
    """
    leaf = _checked(pair, "server certificate", at)
    if isinstance(leaf, str):
        return leaf
    cas = [x509.load_pem_x509_certificate(pem) for pem in trusted]
    if not any(signed_by(leaf, ca) for ca in cas):
        return "the server certificate is not signed by a published CA"
    if sans(leaf) != set(names):
        return "the server certificate's names differ from the Service's names and tls.dnsNames/ipAddresses"
    if needs_renewal(leaf, at):
        return "the server certificate is due for renewal"
    return None


def ca_renewal_reason(pair: KeyPair | None, at: dt.datetime | None = None) -> str | None:
    """Why the Registry's CA must be replaced, or None to keep it."""
    cert = _checked(pair, "CA key pair", at)
    if isinstance(cert, str):
        return cert
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the CA certificate has no basic constraints"
    if not constraints.ca:
        return "the CA certificate is not a CA"
    if needs_renewal(cert, at):
        return "the CA is due for renewal"
    return None


def split(bundle: bytes) -> list[bytes]:
    """The PEM certificates of a bundle, each on its own (unparsable input gives an empty list)."""
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []
    return [c.public_bytes(serialization.Encoding.PEM) for c in certs]


def still_valid(cert_pem: bytes, at: dt.datetime | None = None) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    return cert.not_valid_after_utc > (at or now())


def subject(cert_pem: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(cert_pem).subject


def not_before(cert_pem: bytes) -> dt.datetime:
    return load_chain(cert_pem)[0].not_valid_before_utc


def not_after(cert_pem: bytes) -> dt.datetime:
    return load_chain(cert_pem)[0].not_valid_after_utc


def issue_signing(algorithm: str, common_name: str = "registry-token-service") -> KeyPair:
    """The token-signing key and its self-signed certificate: the registry's `rootcertbundle` and the `x5c`.

    Self-signed rather than issued by the Registry's CA, so that no other key the CA signed (such as the
    registry's own TLS key) could mint tokens. The registry checks its validity on every token: long-lived.
    """
    key: PrivateKeyTypes = (
        rsa.generate_private_key(public_exponent=65537, key_size=3072) if algorithm == "RS256" else _new_key()
    )
    cert = _self_signed(key, common_name, SIGNING_VALIDITY)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def signing_renewal_reason(pair: KeyPair | None, algorithm: str, at: dt.datetime | None = None) -> str | None:
    """Why the token-signing key must be replaced, or None to keep it."""
    cert = _checked(pair, "token-signing key pair", at)
    if isinstance(cert, str):
        return cert
    expected = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    if not isinstance(cert.public_key(), expected):
        return f"tokenAlgorithm is {algorithm}"
    if needs_renewal(cert, at):
        return "the token-signing key is due for renewal"
    return None
