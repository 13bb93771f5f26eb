"""ServiceAccount tokens as identities: the JWT checks, the key cache, the rules naming ServiceAccounts, and the
endpoint taking a token as the Basic password.

Tokens here are signed with keys made in the test, in the exact shape the API server mints (RS256 or ES256,
``kid``, ``aud`` list, ``sub`` ``system:serviceaccount:<ns>:<name>``); tests/e2e/test_serviceaccount_identity.py
proves the same against tokens the real API server minted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from registry_operator.pki import issue_ca, issue_server
from registry_operator.token.acl import Subject, authorize
from registry_operator.token.app import create_app
from registry_operator.token.authn import Authenticator
from registry_operator.token.config import AccessRule, ConfigError, parse_config
from registry_operator.token.runtime import Runtime
from registry_operator.token.scope import Scope
from registry_operator.token.server import HANDLER_OPTIONS
from registry_operator.token.serviceaccounts import (
    MAX_KEYS,
    REFRESH_SECONDS,
    ClusterKeys,
    ClusterKeySource,
    ServiceAccountLogins,
    TokenRejected,
    parse_jwks,
    verify,
)
from registry_operator.token.throttle import FailureThrottle

ISSUER = "https://kubernetes.default.svc.cluster.local"
REALM = "https://reg-token.ns.svc:5001/token"
NOW = 1_800_000_000
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int) -> str:
    return _b64(value.to_bytes(size, "big"))


def jwks(*extra: dict[str, Any]) -> dict[str, Any]:
    rsa_numbers = RSA_KEY.public_key().public_numbers()
    ec_numbers = EC_KEY.public_key().public_numbers()
    return {"keys": [
        {"use": "sig", "kty": "RSA", "kid": "rsa", "alg": "RS256", "n": _int(rsa_numbers.n, 256),
         "e": _int(rsa_numbers.e, 3)},
        {"use": "sig", "kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256", "x": _int(ec_numbers.x, 32),
         "y": _int(ec_numbers.y, 32)},
        *extra,
    ]}  # fmt: skip


KEYS = ClusterKeys(ISSUER, parse_jwks(jwks()))


def mint(
    sub: str = "system:serviceaccount:ns:ci",
    *,
    kid: str = "rsa",
    alg: str = "RS256",
    key: Any = RSA_KEY,
    **claims: Any,
) -> str:
    """A token as the API server's TokenRequest makes it (claims overridable, None removes one)."""
    body = {"aud": [REALM], "exp": NOW + 600, "iat": NOW - 10, "nbf": NOW - 10, "iss": ISSUER, "sub": sub,
            "kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "ci", "uid": "u"}}}  # fmt: skip
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    header = _b64(json.dumps({"alg": alg, "kid": kid}).encode())
    message = f"{header}.{_b64(json.dumps(body).encode())}"
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(message.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{message}.{_b64(signature)}"


def test_a_valid_token_names_its_service_account() -> None:
    assert verify(mint(), KEYS, REALM, NOW) == ("ns", "ci")
    assert verify(mint("system:serviceaccount:ci-ns:bot.v2", kid="ec", alg="ES256", key=EC_KEY, aud=REALM),
                  KEYS, REALM, NOW) == ("ci-ns", "bot.v2")  # fmt: skip


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(aud=["https://kubernetes.default.svc.cluster.local"]), "another audience"),
        (mint(aud=[REALM + "x"]), "another audience"),
        (mint(exp=NOW), "expired"),
        (mint(exp=None), "never expires"),
        (mint(exp="soon"), "not a number"),
        (mint(nbf=NOW + 3600), "not valid yet"),
        (mint(iss="https://other-cluster.example"), "another issuer"),
        (mint(iss="kubernetes/serviceaccount"), "another issuer"),  # a legacy Secret-based token
        (mint("alice"), "not a ServiceAccount"),
        (mint("system:serviceaccount:ns:ci:extra"), "not a ServiceAccount"),
        (mint("system:serviceaccount:NS:ci"), "not a ServiceAccount"),
        (mint(kid="gone"), "does not publish"),
        (mint(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "bad signature"),
        (mint(kid="ec"), "does not fit"),  # an RSA signature presented under the EC key
        (mint(alg="none"), "does not fit"),
        (mint(alg="HS256"), "does not fit"),
        ("a.b", "not a JWT"),
        ("@@@.@@@.@@@", "not a JWT"),
        (mint()[:-8] + "AAAAAAAA", "bad signature"),
    ],
)
def test_invalid_tokens_are_refused_with_the_reason(token: str, reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason) as caught:
        verify(token, KEYS, REALM, NOW)
    assert token not in str(caught.value)


def test_tampered_claims_break_the_signature() -> None:
    header, _, signature = mint().split(".")
    forged = _b64(json.dumps({"aud": [REALM], "exp": NOW + 60, "iss": ISSUER,
                              "sub": "system:serviceaccount:kube-system:admin"}).encode())  # fmt: skip
    with pytest.raises(TokenRejected, match="bad signature"):
        verify(f"{header}.{forged}.{signature}", KEYS, REALM, NOW)


def test_jwks_keeps_usable_signing_keys_only() -> None:
    junk = [{"kty": "RSA", "kid": "bad", "n": 5, "e": "AQAB"}, {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}, "not a key"]  # fmt: skip
    assert sorted(parse_jwks(jwks(*junk))) == ["ec", "rsa"]
    many = [{**jwks()["keys"][0], "kid": f"k{i}"} for i in range(MAX_KEYS * 2)]
    assert len(parse_jwks({"keys": many})) == MAX_KEYS
    assert parse_jwks({"keys": "nope"}) == {}


# -- rules ---------------------------------------------------------------------------------------------------

PULL = [Scope("repository", "ci/app", ("pull", "push"))]


def granted(rules: list[AccessRule], subject: Subject) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.name, s.actions) for s in authorize(rules, {}, subject, PULL)]


def test_rules_name_service_accounts_by_name_or_namespace() -> None:
    by_name = AccessRule(service_accounts=frozenset({"ns/ci"}), repositories=("ci/*",), actions=frozenset({"pull"}))
    by_namespace = AccessRule(service_accounts=frozenset({"build/*"}), repositories=("*",), actions=frozenset({"*"}))
    rules = [by_name, by_namespace]
    assert granted(rules, Subject.service_account("ns", "ci")) == [("ci/app", ("pull",))]
    assert granted(rules, Subject.service_account("ns", "other")) == []
    assert granted(rules, Subject.service_account("build", "anyone")) == [("ci/app", ("pull", "push"))]
    assert granted(rules, Subject.service_account("build-x", "anyone")) == []
    assert Subject.service_account("ns", "ci").name == "system:serviceaccount:ns:ci"


def test_users_and_service_accounts_never_stand_for_each_other() -> None:
    """A user named like a ServiceAccount is not one, and a ServiceAccount is not a user of the same name."""
    for_users = AccessRule(users=frozenset({"system:serviceaccount:ns:ci"}), repositories=("*",),
                           actions=frozenset({"pull"}))  # fmt: skip
    for_accounts = AccessRule(service_accounts=frozenset({"ns/ci"}), repositories=("*",), actions=frozenset({"pull"}))
    assert granted([for_users], Subject.service_account("ns", "ci")) == []
    assert granted([for_accounts], Subject("system:serviceaccount:ns:ci")) == []


def test_config_checks_service_account_entries_and_audience() -> None:
    rule = {"serviceAccounts": ["ns/ci", "build/*"], "repositories": ["*"], "actions": ["pull"]}
    config = parse_config({"service": "s", "access": [rule], "serviceAccountAudience": REALM})
    assert config.access[0].service_accounts == {"ns/ci", "build/*"}
    assert config.service_account_audience == REALM
    with pytest.raises(ConfigError, match="serviceAccountAudience: required"):
        parse_config({"service": "s", "access": [rule]})
    for bad in ("ci", "ns/", "*/ci", "ns/ci/x", "NS/ci", "ns/c*"):
        with pytest.raises(ConfigError, match=r"access\[0\]\.serviceAccounts"):
            parse_config({"service": "s", "serviceAccountAudience": REALM,
                          "access": [{**rule, "serviceAccounts": [bad]}]})  # fmt: skip


# -- the key cache, against a stand-in for the API server's two discovery endpoints ------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _api_server(tmp_path: Path, documents: dict[str, Any]) -> tuple[TestServer, Path]:
    """HTTPS on 127.0.0.1 answering the discovery paths to the bearer token in ``account/token`` only."""
    ca = issue_ca("test-apiserver-ca")
    cert = issue_server(ca, ["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert.cert_pem)
    (tmp_path / "tls.key").write_bytes(cert.key_pem)
    account = tmp_path / "account"
    account.mkdir()
    (account / "token").write_text("pod-token\n")
    (account / "ca.crt").write_bytes(ca.cert_pem)

    async def document(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer pod-token":
            return web.Response(status=401)
        if request.path.endswith("jwks") and request.headers.get("Accept") != "application/jwk-set+json":
            return web.Response(status=406)  # as the API server answers
        documents["hits"] = documents.get("hits", 0) + 1
        return web.json_response(documents[request.path])

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", document)
    app.router.add_get("/openid/v1/jwks", document)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(ssl=context)
    return server, account


def test_keys_are_fetched_once_and_refetched_for_a_new_kid_at_a_bounded_rate(tmp_path: Path) -> None:
    documents: dict[str, Any] = {"/.well-known/openid-configuration": {"issuer": ISSUER},
                                 "/openid/v1/jwks": {"keys": jwks()["keys"][:1]}}  # fmt: skip

    async def scenario() -> None:
        server, account = await _api_server(tmp_path, documents)
        clock = FakeClock()
        source = ClusterKeySource(f"https://127.0.0.1:{server.port}", str(account), clock=clock)
        try:
            logins = ServiceAccountLogins(source, clock=lambda: NOW)
            assert await logins.login(mint(), REALM) == ("ns", "ci")
            assert await logins.login(mint(), REALM) == ("ns", "ci")
            assert source.fetches == 1
            rotated = mint(kid="ec", alg="ES256", key=EC_KEY)
            with pytest.raises(TokenRejected, match="does not publish"):
                await logins.login(rotated, REALM)  # unknown, but the keys were read just now: no refetch
            assert source.fetches == 1
            clock.now += REFRESH_SECONDS + 1
            with pytest.raises(TokenRejected, match="does not publish"):
                await logins.login(rotated, REALM)  # refetched: the cluster does not have it yet
            assert source.fetches == 2
            documents["/openid/v1/jwks"] = jwks()  # the cluster adds its new key
            for _ in range(50):  # a flood of unknown kids within the refresh interval costs no fetch
                with pytest.raises(TokenRejected):
                    await logins.login(mint(kid="random"), REALM)
            assert source.fetches == 2
            clock.now += REFRESH_SECONDS + 1
            assert await logins.login(rotated, REALM) == ("ns", "ci")
            assert source.fetches == 3
        finally:
            await server.close()

    asyncio.run(scenario())


def test_unreachable_api_server_refuses_without_a_fetch_per_request(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_bytes(issue_ca("unused").cert_pem)
    source = ClusterKeySource("https://127.0.0.1:9", str(tmp_path))  # nothing listens on the discard port

    async def scenario() -> None:
        logins = ServiceAccountLogins(source)
        for _ in range(3):
            with pytest.raises(TokenRejected, match="unavailable"):
                await logins.login(mint(), REALM)

    asyncio.run(scenario())
    assert source.fetches == 1


# -- the endpoint ------------------------------------------------------------------------------------------


class StaticKeys(ClusterKeySource):
    """The cluster's keys as already fetched (the fetch itself is proven above and end to end)."""

    def __init__(self, keys: ClusterKeys) -> None:
        super().__init__("https://unused.invalid")
        self._fixed = keys

    async def keys(self, kid: str) -> ClusterKeys:
        return self._fixed


def test_token_endpoint_takes_a_service_account_token_as_password(mounted: Any, caplog: Any) -> None:
    mounted.write_config(
        serviceAccountAudience=REALM,
        access=[{"serviceAccounts": ["ns/ci"], "repositories": ["ci/*"], "actions": ["pull"]}],
    )
    now = int(time.time())
    window = {"exp": now + 600, "iat": now, "nbf": now}
    good = mint(**window)
    wrong_audience = mint(**window, aud=["https://kubernetes.default.svc.cluster.local"])
    other = mint("system:serviceaccount:ns:other", **window)

    async def scenario() -> None:
        runtime = Runtime(mounted.config_path)
        authenticator = Authenticator(runtime.htpasswd, FailureThrottle())
        app = create_app(runtime, authenticator, ServiceAccountLogins(StaticKeys(KEYS)))
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server(**HANDLER_OPTIONS)
        try:
            async with TestClient(server) as client:
                query = [("service", "ns/registry"), ("scope", "repository:ci/app:pull,push")]

                async def ask(password: str) -> tuple[int, dict[str, Any]]:
                    auth = base64.b64encode(f"anything:{password}".encode()).decode()
                    response = await client.get("/token", params=query, headers={"Authorization": f"Basic {auth}"})
                    return response.status, await response.json()

                def claims(body: dict[str, Any]) -> dict[str, Any]:
                    payload = body["token"].split(".")[1]
                    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

                status, body = await ask(good)
                assert status == 200
                assert claims(body)["sub"] == "system:serviceaccount:ns:ci"
                assert claims(body)["access"] == [{"type": "repository", "name": "ci/app", "actions": ["pull"]}]
                status, body = await ask(other)  # a valid token, but no rule names it
                assert status == 200 and claims(body)["access"] == []
                assert (await ask(wrong_audience))[0] == 401
                form = {"grant_type": "password", "username": "x", "password": good, "service": "ns/registry",
                        "scope": "repository:ci/app:pull"}  # fmt: skip
                response = await client.post("/token", data=form)
                assert response.status == 200
                response = await client.post("/token", data={**form, "password": "e" * 9000})  # over the bound
                assert response.status == 400 and (await response.json())["error"] == "invalid_grant"
        finally:
            await server.close()
            authenticator.close()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert "another audience" in caplog.text
    assert good not in caplog.text and wrong_audience not in caplog.text


def test_without_an_audience_long_passwords_stay_plain_failures(mounted: Any) -> None:
    """A Registry whose rules name no ServiceAccount never reads cluster keys: a token is a wrong password."""

    async def scenario() -> None:
        runtime = Runtime(mounted.config_path)
        authenticator = Authenticator(runtime.htpasswd, FailureThrottle())
        source = StaticKeys(KEYS)
        server = TestServer(create_app(runtime, authenticator, ServiceAccountLogins(source)), host="127.0.0.1",
                            port=0)  # fmt: skip
        await server.start_server(**HANDLER_OPTIONS)
        try:
            async with TestClient(server) as client:
                auth = base64.b64encode(f"x:{mint()}".encode()).decode()
                response = await client.get("/token", params={"service": "ns/registry"},
                                            headers={"Authorization": f"Basic {auth}"})  # fmt: skip
                assert response.status == 401
        finally:
            await server.close()
            authenticator.close()

    asyncio.run(scenario())
