"""The registry's configuration file, complete, for the distribution version that will read it.

The registry silently ignores unknown keys and its image defaults differ between 2.8 and 3.x, so we always
render every setting we rely on and never lean on a default. This module is the one place where the versions
differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from .. import cacheflush
from ..names import ChildNames
from ..spec import RegistrySpec
from ..token import config as token_service_config

PORT = 5000
DEBUG_PORT = 5001  # metrics, health and pprof: never on the Service
DRAIN_SECONDS = 25
# A Redis that stops answering must cost a request little: the registry then falls back to its storage.
REDIS_TIMEOUT = "1s"
REDIS_PASSWORD_ENV = cacheflush.PASSWORD_ENV  # from the user's Secret: never in the ConfigMap

TLS_DIR = "/etc/registry/tls"
AUTH_DIR = "/etc/registry/auth"
TOKEN_DIR = "/etc/registry/token"
UPSTREAM_DIR = "/etc/registry/upstream"
# distribution's own default, rendered because the image defaults must never be relied on.
PROXY_TTL = "168h"
DATA_DIR = "/var/lib/registry"


def config_dir(version: str) -> str:
    """Where the image looks for its config: the images of 2.8 and 3.x differ."""
    return "/etc/docker/registry" if version == "2.8" else "/etc/distribution"


def config_path(version: str) -> str:
    return f"{config_dir(version)}/config.yml"


def env(spec: RegistrySpec, upstream: Mapping[str, bytes] | None = None) -> list[dict[str, Any]]:
    """Environment variables the registry (and the GC Job on the same storage) needs besides its config file.

    `upstream`: the data of the `<name>-upstream` Secret of a pull-through cache, whose keys are handed to the
    registry from there: the credentials through distribution's env overrides (never in the ConfigMap), and the
    CA as `SSL_CERT_FILE`, which replaces only Go's bundle file: Go still loads every certificate in
    /etc/ssl/certs, where the image keeps the public roots. The S3 key pair comes from the user's Secret as
    `REGISTRY_STORAGE_S3_*` overrides: never in the ConfigMap, never read by the operator into anything but a
    keyed digest."""
    out: list[dict[str, Any]] = []
    if spec.version != "2.8":
        # 3.x exports OpenTelemetry traces to a collector that does not exist unless told not to.
        out.append({"name": "OTEL_TRACES_EXPORTER", "value": "none"})
    if upstream and "username" in upstream:
        secret = ChildNames(spec.name).upstream
        out += [{"name": f"REGISTRY_PROXY_{key.upper()}", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for key in ("username", "password")]
    if upstream and "ca.crt" in upstream:
        out.append({"name": "SSL_CERT_FILE", "value": f"{UPSTREAM_DIR}/ca.crt"})
    creds = spec.storage.s3.credentials if spec.storage.s3 else None
    if creds is not None:
        for param, key in (("ACCESSKEY", creds.access_key_id_key), ("SECRETKEY", creds.secret_access_key_key)):
            out.append({"name": f"REGISTRY_STORAGE_S3_{param}",
                        "valueFrom": {"secretKeyRef": {"name": creds.name, "key": key}}})
    return out


def _driver(spec: RegistrySpec) -> dict[str, Any]:
    """The storage driver's section (the same s3-aws keys in 2.8 and 3.x), plus `redirect` for a bucket.

    Without an endpoint the driver talks to AWS over HTTPS; with one, `secure` follows its scheme. `redirect`
    off (the default) makes the registry pass blob data through itself, so clients never need to reach the
    bucket, only the registry."""
    s3 = spec.storage.s3
    if s3 is None:
        return {"filesystem": {"rootdirectory": DATA_DIR}}
    params: dict[str, Any] = {
        "bucket": s3.bucket,
        "region": s3.region,
        "forcepathstyle": s3.force_path_style,
        "secure": not (s3.endpoint or "").startswith("http://"),
        "v4auth": True,
    }
    if s3.endpoint:
        params["regionendpoint"] = s3.endpoint
    if s3.root_directory:
        params["rootdirectory"] = s3.root_directory
    return {"s3": params, "redirect": {"disable": not s3.redirect}}


def render(
    spec: RegistrySpec, token_realm: str | None = None, token_service: str | None = None, scraped: bool = False
) -> dict[str, Any]:
    """The config as data. `http.secret` is not in it: it comes from a Secret through the environment.

    The debug listener serves `/metrics` next to Go's pprof and expvar (distribution registers them on the same
    mux), so it listens on the pod's loopback only, unless a PodMonitor scrapes it (`scraped`): then on all
    interfaces, with a NetworkPolicy that admits Prometheus alone."""
    http: dict[str, Any] = {
        "addr": f":{PORT}",
        "net": "tcp",
        "draintimeout": f"{DRAIN_SECONDS}s",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
        "debug": {"addr": f"{'' if scraped else '127.0.0.1'}:{DEBUG_PORT}",
                  "prometheus": {"enabled": True, "path": "/metrics"}},
    }
    if spec.tls_enabled:
        http["tls"] = {
            "certificate": f"{TLS_DIR}/tls.crt",
            "key": f"{TLS_DIR}/tls.key",
            "minimumtls": "tls1.2",
        }
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": spec.log_level, "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            **_driver(spec),
            # A cache expires manifests through the delete path; clients' deletes it refuses anyway (405).
            "delete": {"enabled": spec.storage.delete_enabled or spec.proxy is not None},
            "cache": {"blobdescriptor": "redis" if spec.redis else "inmemory"},
            "maintenance": {
                "uploadpurging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False},
                "readonly": {"enabled": spec.read_only},
            },
        },
        "http": http,
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    if spec.proxy is not None:
        # Credentials come from the environment (see `env`), never from this ConfigMap.
        config["proxy"] = {"remoteurl": spec.proxy.remote_url}
        if spec.version != "2.8":  # 2.8 has no ttl: it keeps cached content 7 days
            config["proxy"]["ttl"] = spec.proxy.ttl or PROXY_TTL
    if spec.redis is not None:
        config["redis"] = redis(spec)
    if spec.auth.mode == "htpasswd":
        config["auth"] = {"htpasswd": {"realm": spec.name, "path": f"{AUTH_DIR}/htpasswd"}}
    elif spec.auth.mode == "token":
        token: dict[str, Any] = {
            "realm": token_realm,
            "service": token_service,
            "issuer": token_service_config.DEFAULT_ISSUER,
            "rootcertbundle": f"{TOKEN_DIR}/ca.crt",
        }
        if spec.version != "2.8":
            token["autoredirect"] = False  # 3.x only: keep the realm we publish, never rewrite it per request
        config["auth"] = {"token": token}
    return config


def redis(spec: RegistrySpec) -> dict[str, Any]:
    """The `redis` section: 2.8 takes one `addr`, 3.x go-redis's universal options (`addrs`, a list). The
    password comes through the environment (`REDIS_PASSWORD_ENV`), which both versions read over the file."""
    assert spec.redis is not None
    timeouts = {k: REDIS_TIMEOUT for k in ("dialtimeout", "readtimeout", "writetimeout")}
    if spec.version == "2.8":
        return {"addr": spec.redis.address, "db": spec.redis.db, **timeouts}
    # go-redis retries a failed command 3 times with backoff: with Redis down every blob lookup took about
    # 590 ms instead of 2 ms before falling back to storage. A cache miss is cheap; no retries.
    return {"addrs": [spec.redis.address], "db": spec.redis.db, "maxretries": -1, **timeouts}


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=True)
