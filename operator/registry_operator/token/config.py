"""The token service's configuration: the JSON contract between the operator and the service.

The operator calls :func:`build_config` to render the ConfigMap; the service calls
:func:`load_config`. Both go through :func:`parse_config`, so the operator cannot render a file
the service would refuse. Unknown keys are errors: the registry silently ignores typos and that
has produced insecure deployments, so this service does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

Algorithm = Literal["ES256", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ES256", "RS256")
ACTIONS = frozenset({"pull", "push", "delete", "*"})

MOUNT_ROOT = "/etc/registry-token"
CONFIG_PATH = f"{MOUNT_ROOT}/config/config.json"
HTPASSWD_PATH = f"{MOUNT_ROOT}/auth/htpasswd"
SIGNING_KEY_PATH = f"{MOUNT_ROOT}/signing/tls.key"
SIGNING_CERT_PATH = f"{MOUNT_ROOT}/signing/tls.crt"
TLS_CERT_PATH = f"{MOUNT_ROOT}/tls/tls.crt"
TLS_KEY_PATH = f"{MOUNT_ROOT}/tls/tls.key"
DEFAULT_PORT = 5001
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
METRICS_PORT = 5002
TOKEN_PATH = "/token"  # the registry's auth.token.realm is <scheme>://<service host>:<port>/token
HEALTH_PATH = "/healthz"
DEFAULT_ISSUER = "registry-token-service"
DEFAULT_TTL_SECONDS = 300
MIN_TTL_SECONDS = 60  # docker clients treat shorter expires_in as 60 anyway
MAX_TTL_SECONDS = 86400

_RULE_KEYS = frozenset(
    {"users", "groups", "serviceAccounts", "anonymous", "repositories", "catalog", "actions", "services"}
)
_TOP_KEYS = frozenset(
    {
        "listen", "issuer", "service", "services", "ttlSeconds", "algorithm", "htpasswdPath", "signingKeyPath",
        "signingCertPath", "tlsCertPath", "tlsKeyPath", "groups", "access", "metricsListen", "serviceAccountAudience",
    }
)  # fmt: skip


# A rule's ServiceAccount: `namespace/name`, or `namespace/*` for every ServiceAccount of the namespace.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SERVICE_ACCOUNT = re.compile(rf"{_LABEL}/(\*|{_LABEL}(\.{_LABEL})*)")


def check_service_account(value: str) -> str:
    """`value` if it is `namespace/name` or `namespace/*`; raises ValueError otherwise."""
    if len(value) > 317 or not SERVICE_ACCOUNT.fullmatch(value):
        raise ValueError(f"service account {value!r} is not namespace/name or namespace/*")
    return value


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(frozen=True)
class AccessRule:
    """One ordered ACL entry. ``repositories`` are globs where ``*`` also matches ``/``; ``services``, when
    not empty, limits the rule to tokens for those registries (an index serving several);
    ``service_accounts`` holds ``namespace/name`` and ``namespace/*`` entries."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    service_accounts: frozenset[str] = frozenset()
    anonymous: bool = False
    repositories: tuple[str, ...] = ()
    catalog: bool = False
    actions: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServiceConfig:
    """Validated configuration. Paths and ``listen`` only take effect at start; the rest reloads.

    ``services``: the registries (their ``auth.token.service``) tokens may be issued for, each token naming
    one of them as its audience. One for a Registry's own token service; any number for a RegistryIndex,
    whose joined registries change while it runs.
    """

    services: tuple[str, ...]
    issuer: str = DEFAULT_ISSUER
    listen: str = DEFAULT_LISTEN
    metrics_listen: str | None = None  # plain-HTTP /metrics (token.metrics); None: not served
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    algorithm: Algorithm = "ES256"
    htpasswd_path: str = HTPASSWD_PATH
    signing_key_path: str = SIGNING_KEY_PATH
    signing_cert_path: str = SIGNING_CERT_PATH
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    access: tuple[AccessRule, ...] = ()
    service_account_audience: str | None = None  # the realm; None: ServiceAccount tokens are not accepted


def _str(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string")
    return value


def _str_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}{key}: expected a list of non-empty strings")
    return tuple(value)


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: expected true or false")
    return value


def _check_keys(data: object, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}unknown keys {unknown}")
    return cast(Mapping[str, Any], data)


def _parse_rule(raw: object, index: int, groups: Mapping[str, frozenset[str]]) -> AccessRule:
    where = f"access[{index}]."
    data = _check_keys(raw, _RULE_KEYS, where)
    rule_groups = frozenset(_str_list(data, "groups", where))
    missing = sorted(rule_groups - set(groups))
    if missing:
        raise ConfigError(f"{where}groups: undefined groups {missing}")
    actions = frozenset(_str_list(data, "actions", where))
    if not actions <= ACTIONS:
        raise ConfigError(f"{where}actions: unknown {sorted(actions - ACTIONS)}; allowed {sorted(ACTIONS)}")
    accounts = _str_list(data, "serviceAccounts", where)
    for account in accounts:
        try:
            check_service_account(account)
        except ValueError as exc:
            raise ConfigError(f"{where}serviceAccounts: {exc}") from None
    return AccessRule(
        users=frozenset(_str_list(data, "users", where)),
        groups=rule_groups,
        service_accounts=frozenset(accounts),
        anonymous=_bool(data, "anonymous", where),
        repositories=_str_list(data, "repositories", where),
        catalog=_bool(data, "catalog", where),
        actions=actions,
        services=frozenset(_str_list(data, "services", where)),
    )


def parse_config(raw: object) -> ServiceConfig:
    """Validate a decoded JSON document; raises :class:`ConfigError` on the first problem."""
    data = _check_keys(raw, _TOP_KEYS, "")
    ttl = data.get("ttlSeconds", DEFAULT_TTL_SECONDS)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise ConfigError(f"ttlSeconds: expected an integer in [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}]")
    algorithm = data.get("algorithm", "ES256")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm: expected one of {list(ALGORITHMS)}")
    tls_cert, tls_key = data.get("tlsCertPath"), data.get("tlsKeyPath")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tlsCertPath and tlsKeyPath must be set together")
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, Mapping):
        raise ConfigError("groups: expected an object of name -> list of users")
    groups = {name: frozenset(_str_list(raw_groups, name, "groups.")) for name in raw_groups}
    raw_access = data.get("access", [])
    if not isinstance(raw_access, list):
        raise ConfigError("access: expected a list of rules")
    if ("service" in data) == ("services" in data):
        raise ConfigError("set exactly one of service (one registry) and services (an index)")
    services = (_str(data, "service"),) if "service" in data else _str_list(data, "services", "")
    access = tuple(_parse_rule(rule, i, groups) for i, rule in enumerate(raw_access))
    audience = _str(data, "serviceAccountAudience") if "serviceAccountAudience" in data else None
    if audience is None and any(rule.service_accounts for rule in access):
        raise ConfigError("serviceAccountAudience: required when a rule names serviceAccounts")
    return ServiceConfig(
        services=services,
        issuer=_str(data, "issuer", DEFAULT_ISSUER),
        listen=_str(data, "listen", DEFAULT_LISTEN),
        metrics_listen=_str(data, "metricsListen") if "metricsListen" in data else None,
        ttl_seconds=ttl,
        algorithm=cast(Algorithm, algorithm),
        htpasswd_path=_str(data, "htpasswdPath", HTPASSWD_PATH),
        signing_key_path=_str(data, "signingKeyPath", SIGNING_KEY_PATH),
        signing_cert_path=_str(data, "signingCertPath", SIGNING_CERT_PATH),
        tls_cert_path=None if tls_cert is None else _str(data, "tlsCertPath"),
        tls_key_path=None if tls_key is None else _str(data, "tlsKeyPath"),
        groups=groups,
        access=access,
        service_account_audience=audience,
    )


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate the JSON file the operator mounted."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return parse_config(raw)


def build_config(
    service: str | Sequence[str],
    access: Sequence[Mapping[str, Any]],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    issuer: str = DEFAULT_ISSUER,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    algorithm: Algorithm = "ES256",
    tls: bool = True,
    listen: str = DEFAULT_LISTEN,
    metrics_listen: str | None = f"0.0.0.0:{METRICS_PORT}",
    service_account_audience: str | None = None,
) -> dict[str, Any]:
    """Render the ConfigMap document for the standard mount layout (``MOUNT_ROOT``).

    ``service`` must equal the registry's ``auth.token.service`` and ``issuer`` its
    ``auth.token.issuer``; a list (an index) names every registry the service issues tokens for.
    ``service_account_audience`` (the realm) is what ServiceAccount tokens must be minted for.
    Raises :class:`ConfigError` if the service would reject the result.
    """
    doc: dict[str, Any] = {
        "listen": listen,
        "issuer": issuer,
        **({"service": service} if isinstance(service, str) else {"services": list(service)}),
        "ttlSeconds": ttl_seconds,
        "algorithm": algorithm,
        "htpasswdPath": HTPASSWD_PATH,
        "signingKeyPath": SIGNING_KEY_PATH,
        "signingCertPath": SIGNING_CERT_PATH,
        "groups": {name: list(members) for name, members in (groups or {}).items()},
        "access": [dict(rule) for rule in access],
    }
    if tls:
        doc["tlsCertPath"], doc["tlsKeyPath"] = TLS_CERT_PATH, TLS_KEY_PATH
    if metrics_listen:
        doc["metricsListen"] = metrics_listen
    if service_account_audience:
        doc["serviceAccountAudience"] = service_account_audience
    parse_config(doc)
    return doc
