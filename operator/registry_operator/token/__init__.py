"""Token service ("index") for ``auth.mode: token``.

Authenticates users against a bcrypt htpasswd file and Kubernetes ServiceAccounts by their tokens
(:mod:`.serviceaccounts`), grants per-repository actions from ordered access rules, and signs
short-lived JWTs that distribution 2.8 and 3.x verify against the signing certificate
(``auth.token.rootcertbundle``). Runs as its own Deployment; never imports kopf.

The operator needs only this module's exports: :func:`build_config` to render the ConfigMap,
and the mount path constants. The signing key pair comes from :func:`registry_operator.pki.issue_signing`.
"""

from .config import (
    CONFIG_PATH,
    DEFAULT_ISSUER,
    DEFAULT_PORT,
    HEALTH_PATH,
    HTPASSWD_PATH,
    MOUNT_ROOT,
    SIGNING_CERT_PATH,
    SIGNING_KEY_PATH,
    TLS_CERT_PATH,
    TLS_KEY_PATH,
    TOKEN_PATH,
    AccessRule,
    Algorithm,
    ConfigError,
    ServiceConfig,
    build_config,
    load_config,
    parse_config,
)

__all__ = [
    "CONFIG_PATH",
    "DEFAULT_ISSUER",
    "DEFAULT_PORT",
    "HEALTH_PATH",
    "HTPASSWD_PATH",
    "MOUNT_ROOT",
    "SIGNING_CERT_PATH",
    "SIGNING_KEY_PATH",
    "TLS_CERT_PATH",
    "TLS_KEY_PATH",
    "TOKEN_PATH",
    "AccessRule",
    "Algorithm",
    "ConfigError",
    "ServiceConfig",
    "build_config",
    "load_config",
    "parse_config",
]
