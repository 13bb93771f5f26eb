"""Whether a pull-through cache's upstream answers: one bounded request per reconcile, never a retry.

distribution asks the upstream for `/v2/` once, at start, and exits when it cannot reach it, so an
unreachable upstream shows up only as a pod that never gets ready. This probe says why, in the `Upstream`
condition: the operator sends the same request (TLS verified against the public roots plus the configured CA,
the configured credentials if the upstream asks for Basic auth) with a 5-second bound. It runs when the
Registry is reconciled anyway (a change, a child's event, the hourly resync): a failure is reported, never
retried, so an upstream that stays down costs one status write when it goes down and nothing after.

The operator's network position is not the pod's: a NetworkPolicy or egress rule may let one through and not
the other. The condition says what the operator saw.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp

from .material import Problem
from .spec import Proxy

TIMEOUT_SECONDS = 5.0


def _context(ca_pem: bytes | None) -> ssl.SSLContext:
    """The roots the registry trusts: the system's, plus the configured CA (see render.config.env)."""
    context = ssl.create_default_context()
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem.decode())
    return context


def _scheme(challenge: str) -> str:
    return challenge.split(" ", 1)[0].lower()


async def probe(
    proxy: Proxy, upstream: Mapping[str, bytes], version: str, timeout: float = TIMEOUT_SECONDS
) -> Problem | None:
    """None if the upstream answers `GET /v2/` as a registry the cache can pull from, else why not.

    `upstream`: the decided `<name>-upstream` data (credentials, CA). Messages name the URL and the kind of
    failure, never a credential."""
    url = f"{proxy.remote_url}/v2/"
    ssl_context = _context(upstream.get("ca.crt")) if url.startswith("https://") else False
    user, password = upstream.get("username"), upstream.get("password")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, ssl=ssl_context, allow_redirects=False) as resp:
                status, challenge = resp.status, resp.headers.get("WWW-Authenticate", "")
            if status == 401 and _scheme(challenge) == "basic":
                if not (user and password):
                    return Problem("UpstreamUnauthorized", f"{url} asks for credentials: name a Secret with "
                                   "username and password in proxy.credentialsSecretName")
                if version == "2.8":
                    # distribution 2.8 hands credentials only to a Bearer realm (registry/proxy/proxyauth.go).
                    return Problem("UpstreamAuthUnsupported", f"{url} asks for Basic authentication, which "
                                   "distribution 2.8 never answers with the configured credentials: use version 3")
                auth = aiohttp.BasicAuth(user.decode(), password.decode(), encoding="utf-8")
                async with session.get(url, ssl=ssl_context, allow_redirects=False, auth=auth) as resp:
                    status = resp.status
                if status == 401:
                    return Problem("UpstreamUnauthorized", f"{url} refuses the credentials in the Secret "
                                   f"{proxy.credentials_secret!r}")
    except aiohttp.ClientConnectorCertificateError as exc:
        return Problem("UpstreamUntrusted", f"{url}: TLS certificate not trusted ({exc.certificate_error}); "
                       "name its CA in proxy.caSecretName")
    except aiohttp.ClientSSLError as exc:
        return Problem("UpstreamTLSFailed", f"{url}: TLS failed ({type(exc).__name__})")
    except aiohttp.ClientConnectorError as exc:
        return Problem("UpstreamUnreachable", f"{url}: cannot connect ({exc.os_error.strerror or exc.os_error})")
    except TimeoutError:
        return Problem("UpstreamUnreachable", f"{url}: no answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return Problem("UpstreamUnreachable", f"{url}: {type(exc).__name__}")
    if status in (200, 401):  # 401 here: a Bearer challenge, which the cache answers with a token of its own
        return None
    return Problem("UpstreamUnreachable", f"{url} answered HTTP {status}, not a registry's 200 or 401")
