"""Kubernetes ServiceAccount tokens as identities: a projected token, sent as the Basic password, is verified
here against the cluster's own OIDC signing keys.

Why local verification and not the TokenReview API: TokenReview needs ``tokenreviews create``, a cluster-wide
permission (``system:auth-delegator``) the operator would have to grant to every Registry's token service, so
anyone who can create a Registry could hand a pod that power. The keys are public and readable by every
ServiceAccount by default (``system:service-account-issuer-discovery``), so the service reads them with its own
automounted token: ``/.well-known/openid-configuration`` for the issuer, ``/openid/v1/jwks`` for the keys, both
on the API server the kubelet names in ``KUBERNETES_SERVICE_HOST``/``PORT``, verified with the in-cluster CA.

The price is revocation: TokenReview also checks that the ServiceAccount (and the pod or Secret a token is
bound to) still exists; a signature cannot. A token stays valid until its ``exp``, which is why tokens without
one (legacy Secret-based tokens, whose issuer differs anyway) are refused and why clients should mint short
ones (``kubectl create token`` defaults to one hour).

A token counts only if its issuer is the cluster's, its audience includes this service's realm (so a token
minted for the API server or another service is refused), it is inside its validity window, and its subject is
``system:serviceaccount:<namespace>:<name>``. Keys are cached; an unknown ``kid`` (the cluster rotated its key)
refetches them, at most once per ``REFRESH_SECONDS`` whatever clients send, and the cache is dropped after
``KEYS_MAX_AGE_SECONDS`` so a key the cluster retired stops being accepted. Each fetched document is read up
to ``MAX_DOCUMENT_BYTES`` and at most ``MAX_KEYS`` keys are kept: memory is bounded whatever the API server
or a client sends. Tokens are never logged; rejections name only the reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

log = logging.getLogger(__name__)

ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where the kubelet mounts the pod's own token
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
SUBJECT_PREFIX = "system:serviceaccount:"
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_KEYS = 32
REFRESH_SECONDS = 30.0
KEYS_MAX_AGE_SECONDS = 600.0
FETCH_TIMEOUT_SECONDS = 5.0
CLOCK_SKEW_SECONDS = 60  # tolerated for nbf/iat only, as the API server does; exp is exact
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBJECT = re.compile(rf"{SUBJECT_PREFIX}({_DNS_LABEL}):({_DNS_LABEL}(\.{_DNS_LABEL})*)")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class TokenRejected(Exception):
    """The token is not a valid ServiceAccount token for this service; the message is a reason, never the token."""


@dataclass(frozen=True)
class ClusterKeys:
    """The cluster's token issuer and its public keys by ``kid``."""

    issuer: str
    keys: Mapping[str, PublicKey]


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected("not a JWT") from exc


def _b64int(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("expected a base64url string")
    return int.from_bytes(_b64decode(value), "big")


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise TokenRejected("not a JWT") from exc
    if not isinstance(value, dict):
        raise TokenRejected("not a JWT")
    return value


def parse_jwks(document: Mapping[str, Any]) -> dict[str, PublicKey]:
    """The RSA and P-256 signing keys of a JWK set by ``kid``; other keys are skipped, at most ``MAX_KEYS`` kept."""
    keys: dict[str, PublicKey] = {}
    raw_keys = document.get("keys")
    for jwk in raw_keys if isinstance(raw_keys, list) else []:
        if len(keys) >= MAX_KEYS:
            break
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        try:
            if jwk.get("kty") == "RSA":
                keys[jwk["kid"]] = rsa.RSAPublicNumbers(_b64int(jwk.get("e")), _b64int(jwk.get("n"))).public_key()
            elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
                point = ec.EllipticCurvePublicNumbers(_b64int(jwk.get("x")), _b64int(jwk.get("y")), ec.SECP256R1())
                keys[jwk["kid"]] = point.public_key()
        except (ValueError, TokenRejected):
            continue  # a malformed key cannot verify anything; the others still can
    return keys


def token_kid(token: str) -> str:
    """The ``kid`` of a compact JWS, read without verifying anything (to pick the key)."""
    header = _json_object(_b64decode(token.split(".", 1)[0]))
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenRejected("the token names no key")
    return kid


def _check_signature(key: PublicKey, alg: object, message: bytes, signature: bytes) -> None:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        else:
            raise TokenRejected("the algorithm does not fit the key")
    except InvalidSignature as exc:
        raise TokenRejected("bad signature") from exc


def _timestamp(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"{name} is not a number")
    return int(value)


def verify(token: str, keys: ClusterKeys, audience: str, now: float) -> tuple[str, str]:
    """(namespace, name) of the ServiceAccount ``token`` was issued to, if it is valid for ``audience`` at
    ``now``; raises :class:`TokenRejected` naming the first failed check."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("not a JWT")
    header = _json_object(_b64decode(parts[0]))
    key = keys.keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
    if key is None:
        raise TokenRejected("signed by a key the cluster does not publish")
    _check_signature(key, header.get("alg"), f"{parts[0]}.{parts[1]}".encode("ascii"), _b64decode(parts[2]))
    claims = _json_object(_b64decode(parts[1]))
    if claims.get("iss") != keys.issuer:
        raise TokenRejected("issued by another issuer than the cluster's")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise TokenRejected("minted for another audience")
    expires = _timestamp(claims, "exp")
    if expires is None:
        raise TokenRejected("the token never expires")
    if now >= expires:
        raise TokenRejected("expired")
    not_before = _timestamp(claims, "nbf")
    if not_before is not None and now + CLOCK_SKEW_SECONDS < not_before:
        raise TokenRejected("not valid yet")
    match = _SUBJECT.fullmatch(claims.get("sub") if isinstance(claims.get("sub"), str) else "")
    if match is None:
        raise TokenRejected("not a ServiceAccount's token")
    return match.group(1), match.group(3)


def _api_server() -> str | None:
    """``https://host:port`` of the API server as the kubelet tells every container, None outside a cluster."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class ClusterKeySource:
    """The cluster's keys, fetched on first use (a service that names no ServiceAccount never asks) and cached
    as the module says. One fetch at a time; callers arriving meanwhile wait for it."""

    def __init__(
        self,
        api_server: str | None = None,
        account_dir: str = ACCOUNT_DIR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_server = api_server or _api_server()
        self._account_dir = account_dir
        self._clock = clock
        self._cached: ClusterKeys | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0  # exposed for tests

    def _usable(self, kid: str) -> ClusterKeys | None:
        if self._cached is None or self._clock() - self._fetched_at > KEYS_MAX_AGE_SECONDS:
            return None
        return self._cached if kid in self._cached.keys else None

    async def keys(self, kid: str) -> ClusterKeys:
        """Keys that include ``kid`` if the cluster publishes it; raises :class:`TokenRejected` when the keys
        cannot be had (the API server is unreachable, or a refetch for an unknown ``kid`` ran too recently)."""
        if found := self._usable(kid):
            return found
        async with self._lock:
            if found := self._usable(kid):
                return found
            if self._clock() - self._attempted_at < REFRESH_SECONDS:
                if self._cached is None or self._clock() - self._fetched_at > KEYS_MAX_AGE_SECONDS:
                    raise TokenRejected("the cluster's keys are unavailable")
                return self._cached  # unknown kid: verify() refuses it without another fetch
            self._attempted_at = self._clock()
            try:
                self._cached = await self._fetch()
            except (TimeoutError, OSError, aiohttp.ClientError, ValueError, ssl.SSLError) as exc:
                log.error("cannot read the cluster's service account keys from %s: %s", self._api_server, exc)
                raise TokenRejected("the cluster's keys are unavailable") from None
            self._fetched_at = self._clock()
            log.info("read %d service account key(s) of issuer %s", len(self._cached.keys), self._cached.issuer)
            return self._cached

    async def _fetch(self) -> ClusterKeys:
        if self._api_server is None:
            raise ValueError("KUBERNETES_SERVICE_HOST/PORT are not set: not running in a cluster")
        self.fetches += 1
        # Read at each fetch: the kubelet rotates the projected token file.
        with open(os.path.join(self._account_dir, "token"), encoding="ascii") as f:
            bearer = f.read().strip()
        context = ssl.create_default_context(cafile=os.path.join(self._account_dir, "ca.crt"))
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {bearer}"}) as session:
            discovery = await self._document(session, context, DISCOVERY_PATH, "application/json")
            # The API server answers 406 to a JWKS request that does not accept this type.
            jwks = await self._document(session, context, JWKS_PATH, "application/jwk-set+json")
        issuer = discovery.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("the discovery document names no issuer")
        return ClusterKeys(issuer, parse_jwks(jwks))

    async def _document(
        self, session: aiohttp.ClientSession, context: ssl.SSLContext, path: str, accept: str
    ) -> dict[str, Any]:
        url, headers = f"{self._api_server}{path}", {"Accept": accept}
        async with session.get(url, ssl=context, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"GET {path}: HTTP {response.status}")
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"GET {path}: over {MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"GET {path}: not a JSON object")
        return document


class ServiceAccountLogins:
    """Turns a token into ``(namespace, name)``, fetching the cluster's keys as needed."""

    def __init__(self, source: ClusterKeySource, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock

    async def login(self, token: str, audience: str) -> tuple[str, str]:
        """Raises :class:`TokenRejected` with the reason; the caller logs it, never the token."""
        keys = await self._source.keys(token_kid(token))
        return verify(token, keys, audience, self._clock())
