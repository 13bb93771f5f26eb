"""The JSON config contract: validation, defaults, and the operator-side builder."""

import json
from pathlib import Path
from typing import Any

import pytest

from registry_operator.token import config as cfg
from registry_operator.token.config import ConfigError, build_config, load_config, parse_config


def minimal(**extra: Any) -> dict[str, Any]:
    return {"service": "ns/reg", **extra}


def test_defaults_follow_the_mount_layout() -> None:
    config = parse_config(minimal())
    assert (config.issuer, config.ttl_seconds, config.algorithm) == ("registry-token-service", 300, "ES256")
    assert config.htpasswd_path == cfg.HTPASSWD_PATH and config.tls_cert_path is None
    assert config.access == () and dict(config.groups) == {}


def test_rules_and_groups_are_parsed() -> None:
    config = parse_config(
        minimal(
            groups={"team-a": ["alice", "carol"]},
            access=[{"groups": ["team-a"], "repositories": ["team-a/*"], "actions": ["pull", "push"]}],
        )
    )
    assert config.groups["team-a"] == frozenset({"alice", "carol"})
    (rule,) = config.access
    assert rule.groups == {"team-a"} and rule.repositories == ("team-a/*",) and not rule.anonymous


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (minimal(ttlSecs=300), "unknown keys"),
        ({}, "service"),
        (minimal(ttlSeconds=30), "ttlSeconds"),
        (minimal(ttlSeconds=300.0), "ttlSeconds"),
        (minimal(ttlSeconds=True), "ttlSeconds"),
        (minimal(algorithm="HS256"), "algorithm"),
        (minimal(tlsCertPath="/a"), "together"),
        (minimal(access=[{"users": ["a"], "actions": ["pull", "write"]}]), "actions"),
        (minimal(access=[{"groups": ["nope"]}]), "undefined groups"),
        (minimal(access=[{"user": ["a"]}]), "access[0].unknown keys"),
        (minimal(access=[{"anonymous": "yes"}]), "anonymous"),
        (minimal(access=[{"repositories": "team-a/*"}]), "repositories"),
        (minimal(groups={"g": "alice"}), "groups.g"),
        (minimal(access={}), "access"),
        ([], "expected an object"),
    ],
)
def test_invalid_documents_name_the_problem(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_load_config_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)


def test_build_config_round_trips_and_is_json() -> None:
    doc = build_config(
        "ns/reg",
        [{"users": ["alice"], "repositories": ["*"], "actions": ["*"], "catalog": True}],
        groups={"g": ("bob",)},
        algorithm="RS256",
    )
    config = parse_config(json.loads(json.dumps(doc)))
    assert config.algorithm == "RS256" and config.tls_cert_path == cfg.TLS_CERT_PATH
    assert config.signing_cert_path == cfg.SIGNING_CERT_PATH and config.groups["g"] == {"bob"}
    assert "tlsCertPath" not in build_config("ns/reg", [], tls=False)


def test_build_config_refuses_what_the_service_would_refuse() -> None:
    with pytest.raises(ConfigError):
        build_config("ns/reg", [{"users": ["a"], "actions": ["pull"], "groups": ["missing"]}])


def test_an_index_lists_services_and_rules_may_name_them() -> None:
    doc = build_config(["dev.ns.svc", "prod.ns.svc"],
                       [{"users": ["ci"], "repositories": ["*"], "actions": ["push"], "services": ["prod.ns.svc"]}])
    config = parse_config(json.loads(json.dumps(doc)))
    assert config.services == ("dev.ns.svc", "prod.ns.svc") and "service" not in doc
    assert config.access[0].services == {"prod.ns.svc"}
    assert parse_config(minimal()).services == ("ns/reg",)
    with pytest.raises(ConfigError, match="exactly one of service"):
        parse_config({**minimal(), "services": ["a"]})
