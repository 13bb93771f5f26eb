"""HTTP endpoints: ``GET /token`` (docker token protocol), ``POST /token`` (OAuth2 password
grant, which containerd tries first whenever it has credentials; answering it saves a round trip
per pull), and ``GET /healthz`` for probes.

A wrong password and an unknown user get the same answer after the same time, so the endpoint
does not reveal which users exist. The ``account`` parameter is ignored: the subject is always the
authenticated user. A password longer than any htpasswd password can be (``MAX_PASSWORD_BYTES``) is
taken for a Kubernetes ServiceAccount token when the config names an audience for them
(:mod:`.serviceaccounts`); the user name is then ignored. Checking one costs microseconds and reveals
nothing secret (the identity is in the token the client holds), so it needs no throttle.

Request sizes are bounded (:mod:`.limits`): a body over ``MAX_BODY_BYTES`` is refused from its
Content-Length before a byte of it is read, and a chunked one as soon as it grows past the limit.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from .acl import Subject, authorize
from .authn import Authenticator
from .config import HEALTH_PATH, TOKEN_PATH
from .limits import MAX_ACCOUNT_TOKEN_BYTES, MAX_BODY_BYTES, MAX_PASSWORD_BYTES
from .metrics import count_answers
from .runtime import Runtime
from .scope import ScopeError, parse_scopes
from .serviceaccounts import ClusterKeySource, ServiceAccountLogins, TokenRejected
from .throttle import TooManyAttempts
from .tokens import issue_token

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
SERVICE_ACCOUNTS = web.AppKey("service_accounts", ServiceAccountLogins)

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _AuthFailed(Exception):
    """Credentials were given and are wrong (or the header is unreadable)."""


def _registry_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers={**_NO_STORE, **(headers or {})})


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers=_NO_STORE)


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise _AuthFailed
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError) as exc:
        raise _AuthFailed from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise _AuthFailed
    return user, password


async def _authenticate(request: web.Request, user: str, password: str) -> Subject:
    """Return the subject or raise :class:`_AuthFailed`; may wait, or raise ``TooManyAttempts``."""
    address = request.remote or "unknown"
    audience = request.app[RUNTIME].config().service_account_audience
    if audience is not None and len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        return await _service_account(request, password, audience, address)
    authenticator = request.app[AUTHENTICATOR]
    if await authenticator.login(user, password, address):
        return Subject(user)
    log.warning("authentication failed for %s from %s", authenticator.describe(user), address)
    raise _AuthFailed


async def _service_account(request: web.Request, token: str, audience: str, address: str) -> Subject:
    """The ServiceAccount ``token`` was minted for, or :class:`_AuthFailed` (logged with the reason, not the token)."""
    try:
        if len(token) > MAX_ACCOUNT_TOKEN_BYTES:
            raise TokenRejected(f"over {MAX_ACCOUNT_TOKEN_BYTES} bytes")
        namespace, name = await request.app[SERVICE_ACCOUNTS].login(token, audience)
    except TokenRejected as exc:
        log.warning("service account token from %s refused: %s", address, exc)
        raise _AuthFailed from None
    return Subject.service_account(namespace, name)


async def _issue(request: web.Request, subject: Subject, service: str | None, scopes: Iterable[str]) -> web.Response:
    runtime = request.app[RUNTIME]
    config = runtime.config()
    if service is None and len(config.services) == 1:
        service = config.services[0]
    if service is None:  # an index: the audience decides which rules apply, never guessed
        return _registry_error(400, "DENIED", "the service parameter is required")
    if service not in config.services:
        return _registry_error(400, "DENIED", f"unknown service {service!r}")
    try:
        requested = parse_scopes(scopes)
    except ScopeError as exc:
        return _registry_error(400, "DENIED", str(exc))
    granted = authorize(config.access, config.groups, subject, requested, service)
    token = issue_token(
        runtime.signer(),
        issuer=config.issuer,
        service=service,
        subject=subject.name,
        access=granted,
        ttl_seconds=config.ttl_seconds,
    )
    log.debug("issued token for %r: %s", subject.name, [(s.name, s.actions) for s in granted])
    return web.json_response(token.response(), headers=_NO_STORE)


def _too_many(exc: TooManyAttempts) -> web.Response:
    retry = str(max(1, round(exc.retry_after)))
    return _registry_error(429, "TOOMANYREQUESTS", "too many failed logins", {"Retry-After": retry})


async def get_token(request: web.Request) -> web.Response:
    """Docker token protocol; no credentials yields an anonymous token."""
    try:
        credentials = _basic_credentials(request)
        subject = Subject() if credentials is None else await _authenticate(request, *credentials)
    except _AuthFailed:
        realm = request.app[RUNTIME].config().issuer.replace('"', "")
        challenge = {"WWW-Authenticate": f'Basic realm="{realm}"'}
        return _registry_error(401, "UNAUTHORIZED", "authentication required", challenge)
    except TooManyAttempts as exc:
        return _too_many(exc)
    return await _issue(request, subject, request.query.get("service"), request.query.getall("scope", []))


async def post_token(request: web.Request) -> web.Response:
    """OAuth2 ``grant_type=password`` (RFC 6749 4.3); no refresh tokens are issued.

    Only the form encoding RFC 6749 prescribes is read: multipart would spool parts to files.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "expected application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:  # a chunked body; answered here, see _too_large
        return _too_large()
    except (ValueError, LookupError):  # undecodable bytes or an unknown charset
        return _oauth_error(400, "invalid_request", "unreadable form")
    fields = {
        k: v for k in ("grant_type", "username", "password", "service", "scope") if isinstance(v := form.get(k), str)
    }
    if fields.get("grant_type") != "password":
        return _oauth_error(400, "unsupported_grant_type", "only grant_type=password is supported")
    if "username" not in fields or "password" not in fields:
        return _oauth_error(400, "invalid_request", "username and password are required")
    try:
        subject = await _authenticate(request, fields["username"], fields["password"])
    except _AuthFailed:
        return _oauth_error(400, "invalid_grant", "invalid username or password")
    except TooManyAttempts as exc:
        return _too_many(exc)
    return await _issue(request, subject, fields.get("service"), [fields.get("scope", "")])


async def healthz(request: web.Request) -> web.Response:
    """Ready once the config, htpasswd file and signing key have loaded (they did, or start failed)."""
    request.app[RUNTIME].config()
    return web.Response(text="ok\n")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _too_large() -> web.Response:
    """413, closing the connection so the rest of the body is never read.

    Returned rather than raised: aiohttp keeps a raised HTTPException in a reference cycle with
    the frames that read the body, which holds those buffers until the cyclic garbage collector
    runs (measured: 120 MiB after 1,000 chunked 1 MB bodies).
    """
    response = _registry_error(413, "SIZE_INVALID", f"request body over {MAX_BODY_BYTES} bytes")
    response.force_close()
    return response


@web.middleware
async def refuse_large_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 413 from the Content-Length alone, and close: the body is never read."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _too_large()
    return await handler(request)


def create_app(
    runtime: Runtime, authenticator: Authenticator, service_accounts: ServiceAccountLogins | None = None
) -> web.Application:
    """The aiohttp application; the caller owns ``authenticator`` (its thread pool) and closes it.
    ``service_accounts`` defaults to the cluster's keys read through the pod's own token (fetched on first use).

    Serve it with the handler options in :data:`.limits.SERVER_LIMITS`, which bound the request
    line (so the query string) and the headers (so the Basic credentials).
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[count_answers, refuse_large_bodies])
    app[RUNTIME] = runtime
    app[AUTHENTICATOR] = authenticator
    app[SERVICE_ACCOUNTS] = service_accounts or ServiceAccountLogins(ClusterKeySource())
    app.router.add_get(TOKEN_PATH, get_token)
    app.router.add_post(TOKEN_PATH, post_token)
    app.router.add_get(HEALTH_PATH, healthz)
    return app
