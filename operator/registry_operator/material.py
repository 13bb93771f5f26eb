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

import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import htpasswd, pki, robot
from .names import ChildNames, password_key
from .spec import Auth, IndexSpec, RegistrySpec

# Observed Secrets: name -> decoded data (None when the Secret does not exist).
Secrets = Mapping[str, Mapping[str, bytes] | None]


@dataclass(frozen=True)
class Problem:
    """Something in the user's input that keeps the Registry from being what the spec asks."""

    reason: str
    message: str


@dataclass(frozen=True)
class Rotation:
    """Material the operator replaced, and why: logged and posted as an Event once it is stored."""

    secret: str  # the Secret that holds the new material
    reason: str  # CamelCase, for the Event
    message: str


@dataclass(frozen=True)
class Material:
    http_secret: str
    fingerprint_key: bytes  # HMAC key of the password fingerprints (see `htpasswd`)
    passwords: Mapping[str, str]  # generated passwords only, user -> password
    htpasswd: str
    fingerprints: Mapping[str, str]  # user -> fingerprint of the password its hash was made from
    ca: pki.KeyPair | None = None  # the operator's CA, when it issues anything
    server: pki.KeyPair | None = None  # the registry's serving pair, issued by our CA or copied from tls.secretName
    server_ca_pem: bytes | None = None  # the `ca.crt` stored next to it
    client_ca_pem: bytes | None = None  # what clients must trust, published in the `-ca` Secret
    token_signing: pki.KeyPair | None = None
    token_trust_pem: bytes | None = None  # signing certificates the registry accepts: current and recent ones
    token_tls: pki.KeyPair | None = None
    robot: robot.Robot | None = None  # the pull Secrets' credential (spec.pullSecrets), see `robot`
    upstream: Mapping[str, bytes] | None = None  # spec.proxy: `username`, `password`, `ca.crt` as far as given
    s3_credentials_digest: str | None = None  # of the S3 key pair the pods read at start (see `_s3_credentials`)
    redis_password: str | None = None  # spec.redis.passwordSecretRef's value, for the operator's probe only
    retention_password: str | None = None  # robot.RETENTION_USER's (spec.retention), kept in `-http-secret`
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    rotations: tuple[Rotation, ...] = field(default_factory=tuple)

    @property
    def serving_cert_pem(self) -> bytes | None:
        return self.server.cert_pem if self.server else None


ROBOTS = (*robot.USERS, robot.RETENTION_USER)  # users of the operator's own, in htpasswd when valid
RETENTION_KEY = "retention-password"  # in `-http-secret`: the only key the retention Job reads


# How long a replaced CA or token-signing certificate stays published next to its successor, so clients and
# registries that still hold the old one keep working while the new one reaches them.
OVERLAP = dt.timedelta(days=7)


@dataclass(frozen=True)
class Joined:
    """What a Registry joined to a RegistryIndex takes from it: where tokens come from and whom to trust."""

    index: str
    realm: str
    trust_pem: bytes  # the index's token-signing certificates (current and recent): the registry's rootcertbundle
    ca_pem: bytes  # the CA of the index's token endpoint, which clients must trust next to the registry's


def service_names(spec: RegistrySpec | IndexSpec, service: str, cluster_domain: str) -> list[str]:
    """Every name a client may use for `service`, plus the extra names from the spec."""
    ns = spec.namespace
    base = [service, f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.{cluster_domain}"]
    extra = [n for n in (*spec.tls.dns_names, *spec.tls.ip_addresses) if n not in base]
    return base + extra


def _pair(data: Mapping[str, bytes] | None) -> pki.KeyPair | None:
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return None
    return pki.KeyPair(data["tls.crt"], data["tls.key"])


def _trust(current: bytes, published: bytes | None, now: dt.datetime) -> bytes:
    """`current` followed by its predecessors in `published` (same subject: ours, not a user's CA that shares
    the bundle) that are still within their overlap.

    The overlap is counted from when `current` was issued, so a bundle needs no stored timestamps: it shrinks
    back to one certificate by itself once `OVERLAP` has passed.
    """
    if now >= pki.not_before(current) + pki.BACKDATE + OVERLAP:
        return current
    subject = pki.subject(current)
    older = [pem for pem in dict.fromkeys(pki.split(published or b""))
             if pem != current and pki.subject(pem) == subject and pki.still_valid(pem, now)]
    return b"".join([current, *older])


def _server(
    existing: pki.KeyPair | None, ca: pki.KeyPair, trusted: bytes, names: list[str], secret: str,
    now: dt.datetime, rotations: list[Rotation],
) -> pki.KeyPair:
    reason = pki.server_renewal_reason(existing, pki.split(trusted), names, now)
    if reason is None and existing is not None:
        return existing
    if existing is not None:  # a first issue is no news
        message = f"issued a new certificate in Secret {secret!r}: {reason}"
        rotations.append(Rotation(secret, "CertificateIssued", message))
    return pki.issue_server(ca, names)


def _generated(auth: Auth, observed: Secrets, names: ChildNames) -> dict[str, str]:
    """Generated passwords as stored: user -> password.

    The published `-passwords` Secret is what users read, and may be deleted by mistake; the operator keeps a
    copy in its private `-http-secret` (which pods read only the `secret` key of), so a deleted `-passwords`
    Secret comes back with the same passwords instead of locking every client out.
    """
    kept = json.loads((observed.get(names.http_secret) or {}).get("generated-passwords") or b"{}")
    published = observed.get(names.passwords) or {}
    out = {}
    for user in auth.users:
        try:
            password = (published.get(password_key(user.name)) or b"").decode() or kept.get(user.name)
        except UnicodeDecodeError:  # edited by hand into something no client could send: ours is kept
            password = kept.get(user.name)
        if password:
            out[user.name] = password
    return out


def _passwords(
    auth: Auth, observed: Secrets, names: ChildNames, problems: list[Problem]
) -> tuple[dict[str, str], dict[str, str]]:
    """(all usable passwords, generated ones); users whose referenced password is unusable are left out."""
    stored = _generated(auth, observed, names)
    usable: dict[str, str] = {}
    generated: dict[str, str] = {}
    for user in auth.users:
        try:
            htpasswd.validate_user(user.name)
        except htpasswd.PasswordError as exc:
            problems.append(Problem("UserNameInvalid", str(exc)))
            continue
        if user.password_ref is None:
            password = stored.get(user.name) or secrets.token_urlsafe(24)
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
    auth: Auth, usable: Mapping[str, str], observed: Secrets, names: ChildNames, key: bytes
) -> tuple[str, dict[str, str]]:
    """(htpasswd file, fingerprints) for the users of `auth`, and the robot users that `usable` holds."""
    stored = observed.get(names.htpasswd) or {}
    existing = htpasswd.parse((stored.get("htpasswd") or b"").decode())
    known = json.loads(stored.get("fingerprints") or b"{}")
    costs = {u.name: htpasswd.GENERATED_COST for u in auth.users if u.password_ref is None}
    costs.update(dict.fromkeys(ROBOTS, htpasswd.GENERATED_COST))
    fresh, prints = htpasswd.reconcile(usable, existing, known, key, costs)
    hashes = dict(fresh)
    # A user whose password source is broken keeps their last good line: never lock someone out
    # because a Secret is briefly missing.
    users = [u.name for u in auth.users] + [user for user in ROBOTS if user in usable]
    lines = [(user, hashes.get(user) or existing[user]) for user in users if user in hashes or user in existing]
    kept = {user: known[user] for user, _ in lines if user not in prints and user in known}
    return htpasswd.render(lines), {**kept, **prints}


def _user_tls(
    spec: RegistrySpec, observed: Secrets, names: ChildNames, now: dt.datetime, problems: list[Problem]
) -> tuple[pki.KeyPair | None, bytes | None]:
    """(serving pair, its CA if any) of a `tls.mode: Secret` Registry.

    The user's pair is copied into our own `-tls` Secret only once it has passed every check, and the pods
    mount that copy: a user Secret that expires, stops matching or briefly disappears leaves the running
    registry (and the next pod) on the last good certificate, with a condition saying what is wrong.
    """
    name = spec.tls.secret_name or ""
    data = observed.get(name)
    problem = None
    if data is None:
        problem = Problem("TLSSecretNotFound", f"TLS Secret {name!r} does not exist")
    elif "tls.crt" not in data or "tls.key" not in data:
        problem = Problem("TLSSecretInvalid", f"TLS Secret {name!r} must have keys tls.crt and tls.key")
    else:
        try:
            pki.check_pair(data["tls.crt"], data["tls.key"], now)
        except pki.CertificateError as exc:
            problem = Problem(f"TLS{exc.reason}", f"TLS Secret {name!r}: {exc}")
        else:
            return pki.KeyPair(data["tls.crt"], data["tls.key"]), data.get("ca.crt")
    last = observed.get(names.tls)
    good = _pair(last)
    problems.append(Problem(problem.reason, problem.message + (
        "; the registry keeps serving the last good certificate" if good else "")))
    return good, (last or {}).get("ca.crt")


def _upstream(spec: RegistrySpec, observed: Secrets, names: ChildNames, problems: list[Problem]) -> dict[str, bytes]:
    """What the pods of a pull-through cache read from `<name>-upstream`: the upstream credentials and CA.

    Copied from the user's Secrets only once they pass the checks, as a user TLS pair is: a referenced Secret
    that goes missing or turns invalid leaves the last good copy (and the running cache) in place, with a
    condition saying what is wrong."""
    assert spec.proxy is not None
    last = observed.get(names.upstream) or {}
    out: dict[str, bytes] = {}
    if spec.proxy.credentials_secret:
        name = spec.proxy.credentials_secret
        data = observed.get(name)
        if data is None:
            problems.append(Problem("UpstreamCredentialsNotFound", f"proxy credentials Secret {name!r} does not exist"))
        elif (not data.get("username") or not data.get("password") or b":" in data["username"]
              or not _utf8(data["username"], data["password"])):
            problems.append(Problem("UpstreamCredentialsInvalid", f"proxy credentials Secret {name!r} needs keys "
                                    "username (without ':') and password, both non-empty UTF-8"))
        else:
            out.update(username=data["username"], password=data["password"])
        if "username" not in out and "username" in last and "password" in last:
            out.update(username=last["username"], password=last["password"])
    if spec.proxy.ca_secret:
        name = spec.proxy.ca_secret
        data = observed.get(name)
        if data is None:
            problems.append(Problem("UpstreamCANotFound", f"proxy CA Secret {name!r} does not exist"))
        elif not pki.split(data.get("ca.crt") or b""):
            problems.append(Problem("UpstreamCAInvalid", f"proxy CA Secret {name!r}: ca.crt holds no PEM certificate"))
        else:
            out["ca.crt"] = data["ca.crt"]
        if "ca.crt" not in out and "ca.crt" in last:
            out["ca.crt"] = last["ca.crt"]
    return out


def _utf8(*values: bytes) -> bool:
    try:
        for value in values:
            value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _s3_credentials(spec: RegistrySpec, observed: Secrets, key: bytes, problems: list[Problem]) -> str | None:
    """A digest of the S3 key pair in the user's Secret, keyed with `key` (the fingerprint key), or None (no
    Secret named, or unusable: a Problem).

    The registry reads the keys from its environment once, at start, so the digest goes into the pod template:
    rotating the keys in the Secret rolls the pods. Keyed, like the upstream login's fingerprint: the pod
    template never carries an unkeyed hash of a secret. Only the digest is kept, never the keys."""
    ref = spec.storage.s3.credentials if spec.storage.s3 else None
    if ref is None:
        return None
    data = observed.get(ref.name)
    if data is None:
        problems.append(Problem("S3CredentialsNotFound", f"S3 credentials Secret {ref.name!r} does not exist"))
        return None
    missing = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if not data.get(k)]
    if missing:
        problems.append(Problem("S3CredentialsInvalid", f"S3 credentials Secret {ref.name!r} has no (or an empty) "
                                                        f"key {', '.join(map(repr, missing))}"))
        return None
    pair = data[ref.access_key_id_key] + b"\0" + data[ref.secret_access_key_key]
    return hmac.new(key, pair, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Accounts:
    http_secret: str
    fingerprint_key: bytes
    passwords: Mapping[str, str]
    htpasswd: str
    fingerprints: Mapping[str, str]


def _accounts(
    auth: Auth, observed: Secrets, names: ChildNames, problems: list[Problem], robots: Mapping[str, str] | None = None
) -> _Accounts:
    """The private secret, generated passwords and the htpasswd file of `auth`'s users and of the valid robot
    credentials `robots` (user -> password); no file when auth is none."""
    kept = observed.get(names.http_secret) or {}
    http_secret = kept["secret"].decode() if "secret" in kept else secrets.token_hex(32)
    fingerprint_key = kept.get("fingerprint-key") or secrets.token_bytes(32)
    usable, generated = _passwords(auth, observed, names, problems)
    usable = {**usable, **(robots or {})}
    htpasswd_text, fingerprints = (
        _htpasswd(auth, usable, observed, names, fingerprint_key) if auth.mode != "none" else ("", {})
    )
    return _Accounts(http_secret, fingerprint_key, generated, htpasswd_text, fingerprints)


def _ca(
    spec: RegistrySpec | IndexSpec, observed: Secrets, names: ChildNames, now: dt.datetime, rotations: list[Rotation]
) -> tuple[pki.KeyPair, bytes]:
    """(the CA, the bundle clients trust: it and its predecessors within the overlap)."""
    ca = _pair(observed.get(names.ca_key))
    reason = pki.ca_renewal_reason(ca, now)
    if reason is not None:
        if ca is not None or observed.get(names.ca) is not None:
            rotations.append(Rotation(names.ca_key, "CARotated", f"issued a new CA: {reason}; the old one stays "
                                      f"in Secret {names.ca!r} for {OVERLAP.days} days"))
        ca = pki.issue_ca(f"{spec.name}.{spec.namespace} {'index' if isinstance(spec, IndexSpec) else 'registry'} CA")
    return ca, _trust(ca.cert_pem, (observed.get(names.ca) or {}).get("ca.crt"), now)


def _token(
    spec: RegistrySpec | IndexSpec, observed: Secrets, names: ChildNames, cluster_domain: str, now: dt.datetime,
    ca: tuple[pki.KeyPair, bytes] | None, rotations: list[Rotation],
) -> tuple[pki.KeyPair, bytes, pki.KeyPair | None]:
    """(signing pair, the signing certificates registries trust, the token endpoint's TLS pair) of a token
    service: a Registry's own or a RegistryIndex's. A rotated key stays trusted for `OVERLAP` next to the new."""
    stored = observed.get(names.token_signing)
    signing = _pair(stored)
    reason = pki.signing_renewal_reason(signing, spec.auth.token_algorithm, now)
    if reason is not None:
        if signing is not None:
            rotations.append(Rotation(names.token_signing, "SigningKeyRotated",
                                      f"issued a new token-signing key: {reason}"))
        signing = pki.issue_signing(spec.auth.token_algorithm)
    trust = _trust(signing.cert_pem, (stored or {}).get("ca.crt") or (stored or {}).get("tls.crt"), now)
    tls = None
    if ca is not None:
        tls = _server(_pair(observed.get(names.token_tls)), ca[0], ca[1],
                      service_names(spec, names.token, cluster_domain), names.token_tls, now, rotations)
    return signing, trust, tls


def _redis_password(spec: RegistrySpec, observed: Secrets, problems: list[Problem]) -> str | None:
    """The Redis password, for the operator's probe (the pods read it from the Secret themselves). A Secret the
    pods cannot read keeps them from starting (the kubelet refuses an env var from a missing Secret or key):
    say so, instead of leaving a rollout that never ends unexplained."""
    ref = spec.redis.password_ref if spec.redis else None
    if ref is None:
        return None
    data = observed.get(ref.name)
    if data is None:
        problems.append(Problem("RedisPasswordSecretNotFound", f"redis: Secret {ref.name!r} does not exist"))
    elif ref.key not in data:
        problems.append(Problem("RedisPasswordSecretKeyMissing", f"redis: Secret {ref.name!r} has no key {ref.key!r}"))
    else:
        return data[ref.key].decode(errors="replace")
    return None


def decide(
    spec: RegistrySpec, observed: Secrets, cluster_domain: str = "cluster.local", now: dt.datetime | None = None,
    rotation: str | None = None, propagation: dt.timedelta = dt.timedelta(seconds=120), retire: bool = False,
    joined: Joined | None = None,
) -> Material:
    """All material for `spec`, reusing everything in `observed` that is still valid.

    `rotation`: the Registry's rotate-pull-credential annotation; `propagation`: how long a new robot credential
    is only valid before copies get it; `retire`: every copy carries the current one (see `robot`). `joined`: the
    index of a Registry joined to one, whose signing certificates it trusts instead of having its own."""
    now = now or pki.now()
    names = ChildNames(spec.name)
    problems: list[Problem] = []
    rotations: list[Rotation] = []

    kept = observed.get(names.http_secret) or {}
    bot = None
    if spec.pull_secrets is not None and spec.auth.mode != "none":
        # Kept next to the HTTP secret, never in the published `-passwords` Secret: it is the operator's to
        # hand out, only through the pull Secrets.
        bot = robot.decide(kept.get("robot"), rotation, now, propagation)
        if retire:
            bot = bot.retire()
    robots = {c.user: c.password for c in bot.valid} if bot else {}
    retention_password = None
    if spec.retention is not None and spec.auth.mode != "none":
        # Generated once, kept like the http secret: a new one would roll the registry's htpasswd for nothing.
        stored = kept.get(RETENTION_KEY)
        retention_password = stored.decode() if stored else secrets.token_urlsafe(24)
        robots[robot.RETENTION_USER] = retention_password
    accounts = _accounts(spec.auth, observed, names, problems, robots)
    redis_password = _redis_password(spec, observed, problems)

    token = spec.auth.own_token_service
    needs_ca = spec.tls.mode == "SelfSigned" or (token and spec.tls_enabled)
    ca = _ca(spec, observed, names, now, rotations) if needs_ca else None

    server = server_ca = client_ca = None
    if spec.tls.mode == "SelfSigned":
        assert ca is not None
        hosts = service_names(spec, names.service, cluster_domain)
        server = _server(_pair(observed.get(names.tls)), ca[0], ca[1], hosts, names.tls, now, rotations)
        server_ca = client_ca = ca[1]
    elif spec.tls.mode == "Secret":
        server, server_ca = _user_tls(spec, observed, names, now, problems)
        client_ca = server_ca

    token_signing = token_trust = token_tls = None
    if token:
        token_signing, token_trust, token_tls = _token(spec, observed, names, cluster_domain, now, ca, rotations)
        if ca is not None and spec.tls.mode == "Secret":  # clients must trust both the user's CA and ours
            client_ca = (client_ca or b"") + ca[1]
    elif joined is not None:
        token_trust = joined.trust_pem
        if client_ca is not None:  # clients reach the index's token endpoint too: one bundle trusts both
            client_ca += joined.ca_pem
    upstream = _upstream(spec, observed, names, problems) if spec.proxy is not None else None
    s3_digest = _s3_credentials(spec, observed, accounts.fingerprint_key, problems)

    return Material(
        http_secret=accounts.http_secret,
        fingerprint_key=accounts.fingerprint_key,
        passwords=accounts.passwords,
        htpasswd=accounts.htpasswd,
        fingerprints=accounts.fingerprints,
        ca=ca[0] if ca else None,
        server=server,
        server_ca_pem=server_ca,
        client_ca_pem=client_ca,
        token_signing=token_signing,
        token_trust_pem=token_trust,
        token_tls=token_tls,
        robot=bot,
        upstream=upstream,
        s3_credentials_digest=s3_digest,
        redis_password=redis_password,
        retention_password=retention_password,
        problems=tuple(problems),
        rotations=tuple(rotations),
    )


def decide_index(
    spec: IndexSpec, observed: Secrets, cluster_domain: str = "cluster.local", now: dt.datetime | None = None
) -> Material:
    """All material of a RegistryIndex's token service, by the same rules as a Registry's own: users'
    passwords and htpasswd, a CA for its TLS certificate, and the signing key its Registries trust."""
    now = now or pki.now()
    names = ChildNames(spec.name)
    problems: list[Problem] = []
    rotations: list[Rotation] = []
    accounts = _accounts(spec.auth, observed, names, problems)
    ca = _ca(spec, observed, names, now, rotations)
    signing, trust, tls = _token(spec, observed, names, cluster_domain, now, ca, rotations)
    return Material(
        http_secret=accounts.http_secret,
        fingerprint_key=accounts.fingerprint_key,
        passwords=accounts.passwords,
        htpasswd=accounts.htpasswd,
        fingerprints=accounts.fingerprints,
        ca=ca[0],
        client_ca_pem=ca[1],
        token_signing=signing,
        token_trust_pem=trust,
        token_tls=tls,
        problems=tuple(problems),
        rotations=tuple(rotations),
    )
