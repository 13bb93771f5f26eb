"""The claims of a registry bearer token and the JSON answer of the token endpoint.

distribution 2.8 rejects an ``aud`` array and float timestamps, so ``aud`` is a plain string and
``exp``/``nbf``/``iat`` are integers.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .scope import Scope
from .signing import Signer


@dataclass(frozen=True)
class IssuedToken:
    token: str
    issued_at: int
    expires_in: int

    def response(self) -> dict[str, object]:
        """Body for GET /token (docker reads ``token``, OAuth2 clients ``access_token``)."""
        issued = datetime.fromtimestamp(self.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": issued,
        }


def issue_token(
    signer: Signer,
    *,
    issuer: str,
    service: str,
    subject: str,
    access: Sequence[Scope],
    ttl_seconds: int,
    now: float | None = None,
) -> IssuedToken:
    """Sign a token for ``subject`` ("" when anonymous) carrying exactly ``access``."""
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": service,
        "exp": issued_at + ttl_seconds,
        "nbf": issued_at,
        "iat": issued_at,
        "jti": secrets.token_urlsafe(16),
        "access": [scope.to_claim() for scope in access],
    }
    return IssuedToken(signer.sign(claims), issued_at, ttl_seconds)
