"""Fixtures for the token service tests: signing material, a kubelet-style mounted layout, JWT checks.

Everything is exposed as fixtures, so the tests work under any pytest import mode."""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from registry_operator.pki import KeyPair, issue_signing

TEST_COST = 4  # bcrypt cost: fast tests
_counter = itertools.count()

SERVICE = "ns/registry"
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
ACCESS: list[dict[str, Any]] = [
    {"users": ["alice"], "repositories": ["team-a/*"], "actions": ["*"], "catalog": True},
    {"groups": ["readers"], "repositories": ["team-a/*"], "actions": ["pull"]},
    {"anonymous": True, "repositories": ["public/*"], "actions": ["pull"]},
]
GROUPS = {"readers": ["bob"]}


def htpasswd_text(users: dict[str, str], prefix: str = "$2b$") -> str:
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(TEST_COST)).decode()
        lines.append(f"{user}:{prefix}{hashed[4:]}")
    return "\n".join(lines) + "\n"


class KubeletVolume:
    """Mimics how the kubelet updates a Secret/ConfigMap volume: a fresh timestamped directory,
    an atomic rename of the ``..data`` symlink, and per-file symlinks through ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: dict[str, bytes | str]) -> None:
        version = self.root / f"..2024_01_01_00_00_00.{next(_counter)}"
        version.mkdir()
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (version / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        os.symlink(version.name, tmp)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)

    def path(self, name: str) -> str:
        return str(self.root / name)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_and_verify(token: str, root_pem: bytes) -> tuple[dict, dict]:
    """Check the token the way distribution does (x5c leaf == root cert, signature) and decode it."""
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_b64url_decode(header_b64))
    claims = json.loads(_b64url_decode(payload_b64))
    leaf_der = base64.b64decode(header["x5c"][0], validate=True)
    root = x509.load_pem_x509_certificate(root_pem)
    assert leaf_der == root.public_bytes(serialization.Encoding.DER)
    key = x509.load_der_x509_certificate(leaf_der).public_key()
    message = f"{header_b64}.{payload_b64}".encode()
    signature = _b64url_decode(signature_b64)
    if header["alg"] == "ES256":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert len(signature) == 64
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    else:
        assert header["alg"] == "RS256" and isinstance(key, rsa.RSAPublicKey)
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    return header, claims


@pytest.fixture(scope="session")
def es256() -> KeyPair:
    return issue_signing("ES256")


@pytest.fixture(scope="session")
def rs256() -> KeyPair:
    return issue_signing("RS256")


@dataclass
class Mounted:
    """The three volumes the operator mounts, each updated like the kubelet does."""

    config: KubeletVolume
    auth: KubeletVolume
    signing: KubeletVolume
    document: dict[str, Any]

    @property
    def config_path(self) -> str:
        return self.config.path("config.json")

    def write_config(self, **changes: Any) -> None:
        self.document = {**self.document, **changes}
        self.config.write({"config.json": json.dumps(self.document)})

    def write_users(self, users: dict[str, str]) -> None:
        self.auth.write({"htpasswd": htpasswd_text(users)})


@pytest.fixture
def mounted(tmp_path: Path, es256: KeyPair) -> Mounted:
    config, auth, signing = (KubeletVolume(tmp_path / d) for d in ("config", "auth", "signing"))
    signing.write({"tls.key": es256.key_pem, "tls.crt": es256.cert_pem})
    document = {
        "service": SERVICE,
        "ttlSeconds": 120,
        "algorithm": "ES256",
        "htpasswdPath": auth.path("htpasswd"),
        "signingKeyPath": signing.path("tls.key"),
        "signingCertPath": signing.path("tls.crt"),
        "groups": GROUPS,
        "access": ACCESS,
    }
    result = Mounted(config, auth, signing, document)
    result.write_users(USERS)
    result.write_config()
    return result


@pytest.fixture
def verify_jwt() -> Callable[[str, bytes], tuple[dict, dict]]:
    return decode_and_verify


@pytest.fixture
def make_htpasswd() -> Callable[..., str]:
    return htpasswd_text


@pytest.fixture
def kubelet_volume(tmp_path: Path) -> Callable[[str], KubeletVolume]:
    return lambda name: KubeletVolume(tmp_path / name)
