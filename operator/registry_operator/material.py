"""Decisions about secret material: keep what exists, create only what is missing or no longer valid.

This is the only step that creates random bytes (keys, salts, passwords). Each decision is a rule on what was
observed: a CA is kept while it is valid, a server certificate while it is signed by that CA, names the right
hosts and is not due for renewal, a bcrypt hash while it verifies the password, a generated password forever.
So a reconcile with nothing to change produces byte-identical material, the renderers produce identical
objects, and nothing is written.

Input problems (a missing password Secret, an unusable user certificate) are collected as `Problem`s instead of
raised: the rest of the Registry keeps working, and existing material is never thrown away because an input is
temporarily broken.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import htpasswd, pki
from .names import ChildNames
from .spec import RegistrySpec

# Observed Secrets: name -> decoded data (None when the Secret does not exist).
Secrets = Mapping[str, Mapping[str, bytes] | None]


@dataclass(frozen=True)
class Problem:
    """Something in the user's input that keeps the Registry from being what the spec asks."""

    reason: str
    message: str


@dataclass(frozen=True)
class Material:
    http_secret: str
    fingerprint_key: bytes  # HMAC key of the password fingerprints (see `htpasswd`)
    passwords: Mapping[str, str]  # generated passwords only, user -> password
    htpasswd: str
    fingerprints: Mapping[str, str]  # user -> fingerprint of the password its hash was made from
    ca: pki.KeyPair | None = None  # the operator's CA, when it issues anything
    server: pki.KeyPair | None = None  # issued server certificate (SelfSigned mode)
    client_ca_pem: bytes | None = None  # what clients must trust, published in the `-ca` Secret
    serving_cert_pem: bytes | None = None  # the registry's certificate, whoever issued it
    token_signing: pki.KeyPair | None = None
    token_tls: pki.KeyPair | None = None
    problems: tuple[Problem, ...] = field(default_factory=tuple)


def service_names(spec: RegistrySpec, service: str, cluster_domain: str) -> list[str]:
    """Every name a client may use for `service`, plus the extra names from the spec."""
    ns = spec.namespace
    base = [service, f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.{cluster_domain}"]
    extra = [n for n in (*spec.tls.dns_names, *spec.tls.ip_addresses) if n not in base]
    return base + extra


def _pair(data: Mapping[str, bytes] | None) -> pki.KeyPair | None:
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return None
    return pki.KeyPair(data["tls.crt"], data["tls.key"])


def _keep_or_issue_server(
    existing: pki.KeyPair | None, ca: pki.KeyPair, names: list[str]
) -> pki.KeyPair:
    if existing and pki.server_is_current(existing, ca.cert_pem, names):
        return existing
    return pki.issue_server(ca, names)


def _passwords(spec: RegistrySpec, observed: Secrets, names: ChildNames, problems: list[Problem]):
    """(all usable passwords, generated ones); users whose referenced password is unusable are left out."""
    stored = observed.get(names.passwords) or {}
    usable: dict[str, str] = {}
    generated: dict[str, str] = {}
    for user in spec.auth.users:
        if user.password_ref is None:
            kept = stored.get(user.name)
            password = kept.decode() if kept else secrets.token_urlsafe(24)
            generated[user.name] = usable[user.name] = password
            continue
        ref = user.password_ref
        data = observed.get(ref.name)
        if data is None:
            problems.append(Problem(
                "PasswordSecretNotFound", f"user {user.name!r}: Secret {ref.name!r} does not exist"))
            continue
        if ref.key not in data:
            problems.append(Problem(
                "PasswordSecretKeyMissing", f"user {user.name!r}: Secret {ref.name!r} has no key {ref.key!r}"))
            continue
        try:
            password = data[ref.key].decode()
        except UnicodeDecodeError:
            problems.append(Problem(
                "PasswordInvalid", f"user {user.name!r}: Secret {ref.name!r} key {ref.key!r} is not UTF-8"))
            continue
        try:
            htpasswd.validate(user.name, password)
        except htpasswd.PasswordError as exc:
            problems.append(Problem("PasswordInvalid", f"Secret {ref.name!r} key {ref.key!r}: {exc}"))
            continue
        usable[user.name] = password
    return usable, generated


def _htpasswd(
    spec: RegistrySpec, usable: Mapping[str, str], observed: Secrets, names: ChildNames, key: bytes
) -> tuple[str, dict[str, str]]:
    """(htpasswd file, fingerprints) for the users of `spec`."""
    stored = observed.get(names.htpasswd) or {}
    existing = htpasswd.parse((stored.get("htpasswd") or b"").decode())
    known = json.loads(stored.get("fingerprints") or b"{}")
    costs = {u.name: htpasswd.GENERATED_COST for u in spec.auth.users if u.password_ref is None}
    fresh, prints = htpasswd.reconcile(usable, existing, known, key, costs)
    hashes = dict(fresh)
    # A user whose password source is broken keeps their last good line: never lock someone out
    # because a Secret is briefly missing.
    lines = [(u.name, hashes.get(u.name) or existing[u.name]) for u in spec.auth.users
             if u.name in hashes or u.name in existing]
    kept = {user: known[user] for user, _ in lines if user not in prints and user in known}
    return htpasswd.render(lines), {**kept, **prints}


def _user_tls(spec: RegistrySpec, observed: Secrets, problems: list[Problem]) -> tuple[bytes | None, bytes | None]:
    """(serving certificate, its CA if the Secret carries one) of a `tls.mode: Secret` Registry."""
    name = spec.tls.secret_name or ""
    data = observed.get(name)
    if data is None:
        problems.append(Problem("TLSSecretNotFound", f"TLS Secret {name!r} does not exist"))
        return None, None
    if "tls.crt" not in data or "tls.key" not in data:
        problems.append(Problem("TLSSecretInvalid", f"TLS Secret {name!r} must have keys tls.crt and tls.key"))
        return None, None
    try:
        pki.check_pair(data["tls.crt"], data["tls.key"])
    except pki.CertificateError as exc:
        problems.append(Problem(f"TLS{exc.reason}", f"TLS Secret {name!r}: {exc}"))
        return None, None
    return data["tls.crt"], data.get("ca.crt")


def decide(spec: RegistrySpec, observed: Secrets, cluster_domain: str = "cluster.local") -> Material:
    """All material for `spec`, reusing everything in `observed` that is still valid."""
    names = ChildNames(spec.name)
    problems: list[Problem] = []

    kept = observed.get(names.http_secret) or {}
    http_secret = kept["secret"].decode() if "secret" in kept else secrets.token_hex(32)
    fingerprint_key = kept.get("fingerprint-key") or secrets.token_bytes(32)
    usable, generated = _passwords(spec, observed, names, problems)
    htpasswd_text, fingerprints = (
        _htpasswd(spec, usable, observed, names, fingerprint_key) if spec.auth.mode != "none" else ("", {})
    )

    token = spec.auth.mode == "token"
    needs_ca = spec.tls.mode == "SelfSigned" or (token and spec.tls_enabled)
    ca = None
    if needs_ca:
        ca = _pair(observed.get(names.ca_key))
        if ca is None or not pki.ca_is_current(ca):
            ca = pki.issue_ca(f"{spec.name}.{spec.namespace} registry CA")

    server = serving = client_ca = None
    if spec.tls.mode == "SelfSigned":
        assert ca is not None
        hosts = service_names(spec, names.service, cluster_domain)
        server = _keep_or_issue_server(_pair(observed.get(names.tls)), ca, hosts)
        serving, client_ca = server.cert_pem, ca.cert_pem
    elif spec.tls.mode == "Secret":
        serving, client_ca = _user_tls(spec, observed, problems)

    token_signing = token_tls = None
    if token:
        token_signing = _pair(observed.get(names.token_signing))
        if token_signing is None or not pki.signing_is_current(token_signing, spec.auth.token_algorithm):
            token_signing = pki.issue_signing(spec.auth.token_algorithm)
        if ca is not None:
            token_tls = _keep_or_issue_server(
                _pair(observed.get(names.token_tls)), ca, service_names(spec, names.token, cluster_domain))
            if spec.tls.mode == "Secret":  # clients must trust both the user's CA and ours
                client_ca = (client_ca or b"") + ca.cert_pem

    return Material(
        http_secret=http_secret,
        fingerprint_key=fingerprint_key,
        passwords=generated,
        htpasswd=htpasswd_text,
        fingerprints=fingerprints,
        ca=ca,
        server=server,
        client_ca_pem=client_ca,
        serving_cert_pem=serving,
        token_signing=token_signing,
        token_tls=token_tls,
        problems=tuple(problems),
    )
