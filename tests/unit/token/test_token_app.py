"""The HTTP endpoints in-process (aiohttp test server on 127.0.0.1, port 0, with the server's limits)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry_operator.pki import issue_signing
from registry_operator.token.app import AUTHENTICATOR, create_app
from registry_operator.token.authn import Authenticator
from registry_operator.token.limits import MAX_BODY_BYTES
from registry_operator.token.runtime import Runtime
from registry_operator.token.server import HANDLER_OPTIONS
from registry_operator.token.throttle import FailureThrottle

Verify = Callable[[str, bytes], tuple[dict, dict]]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SCOPES = [("scope", "repository:team-a/app:pull,push"), ("scope", "repository:public/lib:pull,push")]


@asynccontextmanager
async def serving(mounted: Any, throttle: FailureThrottle | None = None) -> AsyncIterator[TestClient]:
    runtime = Runtime(mounted.config_path)
    authenticator = Authenticator(runtime.htpasswd, throttle or FailureThrottle())
    server = TestServer(create_app(runtime, authenticator), host="127.0.0.1", port=0)
    await server.start_server(**HANDLER_OPTIONS)  # as server.serve() does
    try:
        async with TestClient(server) as client:
            yield client
    finally:
        authenticator.close()


def run(mounted: Any, scenario: Callable[[TestClient], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        async with serving(mounted, **kwargs) as client:
            await scenario(client)

    asyncio.run(main())


async def token_claims(
    client: TestClient, verify: Verify, cert: bytes, headers: dict[str, str] | None, params: Any = ()
) -> dict:
    response = await client.get("/token", params=[("service", "ns/registry"), *params], headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 120 and body["issued_at"].endswith("Z")
    return verify(body["token"], cert)[1]


def access(claims: dict) -> dict[str, list[str]]:
    return {entry["name"]: entry["actions"] for entry in claims["access"]}


def test_authenticated_user_gets_the_intersection(mounted: Any, es256: Any, verify_jwt: Verify) -> None:
    async def scenario(client: TestClient) -> None:
        claims = await token_claims(
            client,
            verify_jwt,
            es256.cert_pem,
            basic("alice", "alice-pw"),
            [*SCOPES, ("scope", "registry:catalog:*")],
        )
        assert claims["sub"] == "alice" and claims["aud"] == "ns/registry"
        assert access(claims) == {"team-a/app": ["pull", "push"], "public/lib": ["pull"], "catalog": ["*"]}
        claims = await token_claims(client, verify_jwt, es256.cert_pem, basic("bob", "bob-pw"), SCOPES)
        assert access(claims) == {"team-a/app": ["pull"], "public/lib": ["pull"]}

    run(mounted, scenario)


def test_anonymous_and_login_without_scope(mounted: Any, es256: Any, verify_jwt: Verify) -> None:
    async def scenario(client: TestClient) -> None:
        claims = await token_claims(client, verify_jwt, es256.cert_pem, None, SCOPES)
        assert claims["sub"] == "" and access(claims) == {"public/lib": ["pull"]}
        claims = await token_claims(
            client, verify_jwt, es256.cert_pem, basic("carol", "carol-pw"), [("account", "carol")]
        )
        assert claims["sub"] == "carol" and claims["access"] == []

    run(mounted, scenario)


def test_wrong_credentials_get_401_without_revealing_the_user(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        answers = []
        for auth in (basic("alice", "nope"), basic("mallory", "nope"), basic("", "x")):
            response = await client.get("/token", params=SCOPES, headers=auth)
            answers.append((response.status, response.headers["WWW-Authenticate"], await response.text()))
        assert answers[0][0] == 401 and answers[0][1] == 'Basic realm="registry-token-service"'
        assert answers[0] == answers[1] == answers[2]
        assert "alice" not in answers[0][2]

    run(mounted, scenario)


def test_malformed_authorization_headers_get_401(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer abc"):
            response = await client.get("/token", headers={"Authorization": header})
            assert response.status == 401, header

    run(mounted, scenario)


def test_bad_requests(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        response = await client.get("/token", params={"service": "other/registry"})
        assert response.status == 400 and "unknown service" in await response.text()
        response = await client.get("/token", params={"scope": "repository:nope"})
        assert response.status == 400 and "malformed scope" in await response.text()

    run(mounted, scenario)


def test_oauth2_password_grant(mounted: Any, es256: Any, verify_jwt: Verify) -> None:
    async def scenario(client: TestClient) -> None:
        form = {
            "grant_type": "password",
            "username": "alice",
            "password": "alice-pw",
            "service": "ns/registry",
            "client_id": "containerd-client",
            "scope": "repository:team-a/app:pull,push repository:public/lib:push",
        }
        response = await client.post("/token", data=form)
        assert response.status == 200
        claims = verify_jwt((await response.json())["access_token"], es256.cert_pem)[1]
        assert access(claims) == {"team-a/app": ["pull", "push"]}
        response = await client.post("/token", data={**form, "password": "wrong"})
        assert response.status == 400 and (await response.json())["error"] == "invalid_grant"
        response = await client.post("/token", data={**form, "grant_type": "refresh_token"})
        assert response.status == 400 and (await response.json())["error"] == "unsupported_grant_type"
        response = await client.post("/token", data={"grant_type": "password", "username": "alice"})
        assert response.status == 400 and (await response.json())["error"] == "invalid_request"

    run(mounted, scenario)


def test_healthz(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        response = await client.get("/healthz")
        assert response.status == 200 and await response.text() == "ok\n"

    run(mounted, scenario)


def test_second_login_is_served_from_the_cache(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        for _ in range(3):
            response = await client.get("/token", headers=basic("alice", "alice-pw"))
            assert response.status == 200
        assert client.server.app[AUTHENTICATOR].bcrypt_checks == 1

    run(mounted, scenario)


def test_htpasswd_change_applies_at_once_even_for_cached_credentials(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        assert (await client.get("/token", headers=basic("alice", "alice-pw"))).status == 200
        mounted.write_users({"alice": "rotated", "dave": "dave-pw"})
        assert (await client.get("/token", headers=basic("alice", "alice-pw"))).status == 401
        assert (await client.get("/token", headers=basic("alice", "rotated"))).status == 200
        assert (await client.get("/token", headers=basic("dave", "dave-pw"))).status == 200

    run(mounted, scenario)


def test_config_change_applies_without_restart(mounted: Any, es256: Any, verify_jwt: Verify) -> None:
    async def scenario(client: TestClient) -> None:
        bob = basic("bob", "bob-pw")
        assert access(await token_claims(client, verify_jwt, es256.cert_pem, bob, SCOPES))["team-a/app"] == ["pull"]
        mounted.write_config(access=[{"users": ["bob"], "repositories": ["team-a/*"], "actions": ["push"]}])
        claims = await token_claims(client, verify_jwt, es256.cert_pem, bob, SCOPES)
        assert access(claims) == {"team-a/app": ["push"]}
        mounted.config.write({"config.json": "{broken"})  # a bad update keeps the last good config
        claims = await token_claims(client, verify_jwt, es256.cert_pem, bob, SCOPES)
        assert access(claims) == {"team-a/app": ["push"]}

    run(mounted, scenario)


def test_signing_key_rotation_applies_without_restart(mounted: Any, verify_jwt: Verify) -> None:
    rotated = issue_signing("ES256")

    async def scenario(client: TestClient) -> None:
        mounted.signing.write({"tls.key": rotated.key_pem, "tls.crt": rotated.cert_pem})
        response = await client.get("/token")
        verify_jwt((await response.json())["token"], rotated.cert_pem)

    run(mounted, scenario)


def test_repeated_failures_are_slowed_then_refused_but_cached_users_pass(mounted: Any) -> None:
    # Delays far above a loaded machine's scheduling jitter: 0.5 s steps, refused beyond 1.2 s of waiting.
    throttle = FailureThrottle(free_failures=1, base_delay=0.5, max_delay=0.5, max_wait=1.2)

    async def scenario(client: TestClient) -> None:
        assert (await client.get("/token", headers=basic("alice", "alice-pw"))).status == 200
        # sent together: one free attempt, then 0.5 s apart; what would wait over 1.2 s is refused
        responses = await asyncio.gather(*(client.get("/token", headers=basic("alice", f"guess{i}")) for i in range(6)))
        statuses = sorted(r.status for r in responses)
        assert statuses == [401, 401, 401, 429, 429, 429]
        refused = next(r for r in responses if r.status == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert json.loads(await refused.text())["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert (await client.get("/token", headers=basic("alice", "alice-pw"))).status == 200

    run(mounted, scenario, throttle=throttle)


def test_oversized_requests_are_refused_before_they_are_read(mounted: Any) -> None:
    form = {"grant_type": "password", "username": "alice", "password": "alice-pw"}

    async def chunks(total: int) -> AsyncIterator[bytes]:
        yield b"grant_type=password&password=x&username="
        for _ in range(total // 4096):
            yield b"u" * 4096

    async def scenario(client: TestClient) -> None:
        assert (await client.post("/token", data=form)).status == 200
        padded = {**form, "scope": "x" * MAX_BODY_BYTES}  # an honest Content-Length, over the limit
        response = await client.post("/token", data=padded)
        assert response.status == 413 and response.headers["Connection"] == "close"
        assert (await response.json())["errors"][0]["code"] == "SIZE_INVALID"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}  # chunked: no Content-Length
        response = await client.post("/token", data=chunks(MAX_BODY_BYTES * 4), headers=headers)
        assert response.status == 413
        response = await client.get("/token", params={"scope": "x" * 9000})  # request line
        assert response.status in (400, 414)
        response = await client.get("/token", headers=basic("u" * 9000, "pw"))  # one header
        assert response.status in (400, 431)
        assert client.server.app[AUTHENTICATOR].bcrypt_checks == 1  # none of them reached a check

    run(mounted, scenario)


def test_only_urlencoded_readable_forms_are_accepted(mounted: Any) -> None:
    async def scenario(client: TestClient) -> None:
        for body, content_type in (
            (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
            (b'{"grant_type": "password"}', "application/json"),
            (b"grant_type=password&username=\xff&password=x", "application/x-www-form-urlencoded"),
            (b"grant_type=password", "application/x-www-form-urlencoded; charset=no-such-charset"),
        ):
            response = await client.post("/token", data=body, headers={"Content-Type": content_type})
            assert response.status == 400 and (await response.json())["error"] == "invalid_request", content_type

    run(mounted, scenario)


def test_overlong_names_fail_like_wrong_passwords_and_leave_no_record(mounted: Any) -> None:
    throttle = FailureThrottle()

    async def scenario(client: TestClient) -> None:
        wrong = await client.get("/token", headers=basic("alice", "nope"))
        for _ in range(20):
            response = await client.get("/token", headers=basic("n" * 4000, "pw"))
            assert (response.status, await response.text()) == (wrong.status, await wrong.text())
        form = {"grant_type": "password", "username": "n" * 10_000, "password": "pw"}
        assert (await client.post("/token", data=form)).status == 400
        assert throttle.records() == 2  # alice's wrong password: one pair and its address, nothing else

    run(mounted, scenario, throttle=throttle)


def test_failed_logins_log_no_unknown_user_name(mounted: Any, caplog: pytest.LogCaptureFixture) -> None:
    pasted = "Tr0ub4dor&3-pasted-into-the-user-field"

    async def scenario(client: TestClient) -> None:
        for user in (pasted, "alice", "x" * 5000):
            assert (await client.get("/token", headers=basic(user, "nope"))).status == 401

    with caplog.at_level(logging.WARNING, logger="registry_operator.token"):
        run(mounted, scenario)
    lines = [r.getMessage() for r in caplog.records if r.name == "registry_operator.token.app"]
    assert len(lines) == 3 and "Tr0ub4dor" not in caplog.text and "xxxx" not in caplog.text
    assert lines[0].startswith("authentication failed for unknown user #") and lines[0].endswith("from 127.0.0.1")
    assert "user 'alice'" in lines[1] and "over-long user name (5000 bytes)" in lines[2]


def test_index_names_each_registry_as_the_audience_and_applies_its_rules(
    mounted: Any, es256: Any, verify_jwt: Verify
) -> None:
    """One index, two registries: the token's `aud` is the registry asked for, a rule limited to `prod`
    grants nothing for `dev`, an unknown registry is refused, and without `service` nothing is guessed."""
    document = {k: v for k, v in mounted.document.items() if k != "service"}
    prod_push = {"users": ["alice"], "repositories": ["team-a/*"], "actions": ["pull", "push"],
                 "services": ["prod.ns.svc"]}
    everywhere = {"users": ["alice"], "repositories": ["team-a/*"], "actions": ["pull"]}
    mounted.document = {**document, "services": ["dev.ns.svc", "prod.ns.svc"], "access": [prod_push, everywhere]}
    mounted.write_config()

    async def claims_for(client: TestClient, service: str) -> dict:
        response = await client.get("/token", params=[("service", service), SCOPES[0]],
                                    headers=basic("alice", "alice-pw"))
        assert response.status == 200, await response.text()
        return verify_jwt((await response.json())["token"], es256.cert_pem)[1]

    async def scenario(client: TestClient) -> None:
        prod, dev = await claims_for(client, "prod.ns.svc"), await claims_for(client, "dev.ns.svc")
        assert prod["aud"] == "prod.ns.svc" and access(prod) == {"team-a/app": ["pull", "push"]}
        assert dev["aud"] == "dev.ns.svc" and access(dev) == {"team-a/app": ["pull"]}
        for params in ([("service", "other.ns.svc")], []):
            response = await client.get("/token", params=params, headers=basic("alice", "alice-pw"))
            assert response.status == 400, params

    run(mounted, scenario)
