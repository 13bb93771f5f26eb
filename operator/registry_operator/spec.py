"""A typed, defaulted view of a Registry's `spec`.

The CRD schema already applies defaults and rejects malformed input, but the operator must not trust that
alone: objects created before a schema change, or a schema without defaults on an old API server, still reach
us. So every default lives here too, once, and the rest of the pipeline reads plain attributes instead of
chains of `.get()`.

Only rules that the schema cannot express (they depend on other objects, or on which combination is sane at
runtime) are checked later, in `material` and `conditions`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import cron
from .token.config import check_service_account

# The robot credential of pull Secrets is a user of the Registry's own token service or htpasswd; a joined
# Registry's users are its index's, which serves several Registries and holds no robot of theirs.
PULL_SECRETS_JOINED = ("pullSecrets needs the Registry's own users: a Registry joined to a RegistryIndex "
                       "(auth.indexRef) has no robot credential to hand out; give workloads a user of the index")

# Pinned images: a Registry never floats to whatever `registry:3` means today.
IMAGES = {"3": "registry:3.1.2", "2.8": "registry:2.8.3"}
DEFAULT_VERSION = "3"
DEFAULT_PORT = 5000
DEFAULT_TOKEN_TTL = "5m"
MIN_TOKEN_TTL_SECONDS = 60


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str = "password"


@dataclass(frozen=True)
class User:
    name: str
    password_ref: SecretKeyRef | None  # None: the operator generates and keeps a password.


@dataclass(frozen=True)
class AccessRule:
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()  # `namespace/name` or `namespace/*`: Kubernetes ServiceAccount tokens
    anonymous: bool = False
    repositories: tuple[str, ...] = ()
    catalog: bool = False
    actions: tuple[str, ...] = ()
    registries: tuple[str, ...] = ()  # a RegistryIndex's rule: only for these joined Registries (empty: all)


@dataclass(frozen=True)
class Auth:
    mode: str = "htpasswd"  # htpasswd | token | none
    users: tuple[User, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    access: tuple[AccessRule, ...] = ()
    token_ttl_seconds: int = 300
    token_algorithm: str = "ES256"
    token_realm: str | None = None
    index: str | None = None  # auth.indexRef.name: users and rules live in that RegistryIndex
    index_namespace: str | None = None  # auth.indexRef.namespace, if given: must be the Registry's own

    @property
    def service_accounts(self) -> bool:
        """Whether a rule names ServiceAccounts, so the token service must read the cluster's keys."""
        return any(rule.service_accounts for rule in self.access)

    @property
    def own_token_service(self) -> bool:
        """Token mode with this Registry's own token service (not joined to a RegistryIndex)."""
        return self.mode == "token" and self.index is None


@dataclass(frozen=True)
class TLS:
    mode: str = "SelfSigned"  # SelfSigned | Secret | Disabled
    secret_name: str | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    size: str = "10Gi"
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    reclaim_policy: str = "Retain"  # Retain | Delete


@dataclass(frozen=True)
class S3Credentials:
    """A user's Secret holding an access key pair; the keys reach the pod as environment variables."""

    name: str
    access_key_id_key: str = "accessKeyId"
    secret_access_key_key: str = "secretAccessKey"


@dataclass(frozen=True)
class S3:
    bucket: str
    region: str = "us-east-1"
    endpoint: str | None = None  # None: AWS itself; else an S3-compatible server's URL (http:// or https://)
    force_path_style: bool = False
    root_directory: str | None = None
    credentials: S3Credentials | None = None  # None: the pod's ambient identity (workload identity)
    service_account: str | None = None  # the registry's and GC Job's ServiceAccount (None: the namespace default)
    redirect: bool = False  # blob GETs redirect clients to presigned bucket URLs instead of passing through


@dataclass(frozen=True)
class Storage:
    claim: Claim | None = None  # None (and no s3): emptyDir
    empty_dir_size_limit: str | None = None
    delete_enabled: bool = False
    s3: S3 | None = None

    @property
    def kind(self) -> str:
        """What holds the images, as published in status.storage."""
        return "S3" if self.s3 else "PersistentVolumeClaim" if self.claim else "EmptyDir"

    @property
    def shared(self) -> bool:
        """Whether several pods may use this storage at once (a bucket, or a ReadWriteMany claim)."""
        return self.s3 is not None or (self.claim is not None and "ReadWriteMany" in self.claim.access_modes)

    @property
    def collectable(self) -> bool:
        """Whether a GC Job can reach the registry's storage (anything but the pod's own emptyDir)."""
        return self.s3 is not None or self.claim is not None


@dataclass(frozen=True)
class Service:
    type: str = "ClusterIP"
    port: int = DEFAULT_PORT
    node_port: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkPolicy:
    enabled: bool = True
    peers: tuple[Mapping[str, Any], ...] = ()  # NetworkPolicyPeer objects, checked by the CRD schema; empty: any


@dataclass(frozen=True)
class GarbageCollection:
    schedule: str | None = None  # 5-field cron, UTC; None: only on request (the gc-requested annotation)
    delete_untagged: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class Retention:
    """spec.retention: which tags go before each garbage collection (see `retention`). A tag is kept when any
    rule keeps it; at least one of `keep_newest` and `keep_younger_than` is set (the CRD says so)."""

    repositories: tuple[str, ...] = ("*",)  # globs over repository names (`*` also crosses `/`)
    keep_newest: int | None = None  # per repository, by the image config's `created`
    keep_younger_than: int | None = None  # seconds
    keep_tags: tuple[str, ...] = ()  # globs over tag names that are never deleted
    dry_run: bool = False


@dataclass(frozen=True)
class Redis:
    """A Redis the registry keeps its blob-descriptor cache in (`spec.redis`), so several replicas share one
    cache instead of each warming its own. It is only a cache: uploads and pulls work without it."""

    address: str  # host:port
    db: int = 0
    password_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class PullSecrets:
    """Where the operator keeps an image pull Secret for this Registry: namespaces named or selected by labels
    (a Kubernetes LabelSelector, kept raw), and the ServiceAccounts there that get it in imagePullSecrets."""

    namespaces: tuple[str, ...] = ()
    selector: Mapping[str, Any] | None = None
    service_accounts: tuple[str, ...] = ("default",)


@dataclass(frozen=True)
class Proxy:
    """spec.proxy: serve as a pull-through cache of one upstream registry (distribution's proxy mode), which
    refuses every push and delete. The referenced Secrets are the user's; the operator copies them, once valid,
    into the Registry's own `<name>-upstream` Secret, which the pods read."""

    remote_url: str
    credentials_secret: str | None = None  # keys `username` and `password`
    ca_secret: str | None = None  # key `ca.crt`: the upstream's private CA, trusted next to the public roots
    ttl: str | None = None  # how long cached content lives (version 3 only); None: distribution's 168h


@dataclass(frozen=True)
class RegistrySpec:
    name: str
    namespace: str
    version: str = DEFAULT_VERSION
    image: str = IMAGES[DEFAULT_VERSION]
    replicas: int = 1
    read_only: bool = False
    log_level: str = "info"
    storage: Storage = field(default_factory=Storage)
    service: Service = field(default_factory=Service)
    tls: TLS = field(default_factory=TLS)
    auth: Auth = field(default_factory=Auth)
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    network_policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    garbage_collection: GarbageCollection = field(default_factory=GarbageCollection)
    pull_secrets: PullSecrets | None = None
    proxy: Proxy | None = None
    node_trust: bool = False  # spec.nodeTrust.enabled: nodes' containerd trusts this registry (`nodetrust`)
    redis: Redis | None = None
    retention: Retention | None = None

    @property
    def effective_replicas(self) -> int:
        """Replicas that can actually share the storage: one unless it is a bucket or a ReadWriteMany claim.

        Two pods on one emptyDir each see their own blobs, and a ReadWriteOnce claim cannot attach to two
        nodes: both silently break pulls or deadlock a rollout, so we run one and say why in a condition.
        """
        return self.replicas if self.storage.shared else 1

    @property
    def tls_enabled(self) -> bool:
        return self.tls.mode != "Disabled"


@dataclass(frozen=True)
class IndexSpec:
    """A RegistryIndex: one token service (users, groups, rules) shared by the Registries that join it.

    `auth` is parsed by the same code as a Registry's `spec.auth` (the CRD reuses the same schema), so both
    speak one vocabulary. The token service always serves TLS from the index's own CA; `tls` only adds names
    to its certificate. The scheduling fields exist because the token service's pod shares its renderer with
    a Registry's; an index leaves them empty.
    """

    name: str
    namespace: str
    auth: Auth = field(default_factory=lambda: Auth(mode="token"))
    tls: TLS = field(default_factory=TLS)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    tls_enabled: bool = True


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> int:
    """Seconds in a Go-style duration such as `5m`, `1h30m` or `90s` (the format the CRD documents)."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return int(sum(float(n) * scale[u] for n, u in parts))


_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def object_name(value: Any, field: str) -> str:
    """`value` if it can name a Secret (a DNS subdomain). The schema says so too; checked again here because
    the name becomes part of an API path, and `a/../b` must never address another object or namespace."""
    if not isinstance(value, str) or len(value) > 253 or not _OBJECT_NAME.fullmatch(value):
        raise ValueError(f"{field} {value!r} is not a valid object name")
    return value


def _user(raw: Mapping[str, Any]) -> User:
    ref = raw.get("passwordSecretRef")
    return User(
        name=raw["name"],
        password_ref=(
            SecretKeyRef(object_name(ref["name"], "passwordSecretRef.name"), ref.get("key") or "password")
            if ref else None
        ),
    )


def _rule(raw: Mapping[str, Any]) -> AccessRule:
    """One access rule; a malformed ServiceAccount (the schema's pattern, again for a CRD without it) raises."""
    return AccessRule(
        users=tuple(raw.get("users") or ()),
        groups=tuple(raw.get("groups") or ()),
        service_accounts=tuple(check_service_account(a) for a in raw.get("serviceAccounts") or ()),
        anonymous=bool(raw.get("anonymous", False)),
        repositories=tuple(raw.get("repositories") or ()),
        catalog=bool(raw.get("catalog", False)),
        actions=tuple(raw.get("actions") or ()),
        registries=tuple(raw.get("registries") or ()),
    )


def parse_auth(raw: Mapping[str, Any] | None, mode: str | None = None) -> Auth:
    """`spec.auth` of a Registry, or the same fields of a RegistryIndex (`mode` given: always token)."""
    raw = raw or {}
    ref = raw.get("indexRef") or {}
    return Auth(
        mode=mode or raw.get("mode") or "htpasswd",
        users=tuple(_user(u) for u in raw.get("users") or ()),
        groups={g["name"]: tuple(g.get("users") or ()) for g in raw.get("groups") or ()},
        access=tuple(_rule(r) for r in raw.get("access") or ()),
        token_ttl_seconds=max(MIN_TOKEN_TTL_SECONDS, parse_duration(raw.get("tokenTTL") or DEFAULT_TOKEN_TTL)),
        token_algorithm=raw.get("tokenAlgorithm") or "ES256",
        token_realm=raw.get("tokenRealm"),
        index=object_name(ref["name"], "auth.indexRef.name") if ref.get("name") else None,
        index_namespace=ref.get("namespace") or None,
    )


def parse_index(name: str, namespace: str, raw: Mapping[str, Any] | None) -> IndexSpec:
    """Build a RegistryIndex's typed spec, with the same defaults as the CRD schema."""
    raw = raw or {}
    tls_raw = raw.get("tls") or {}
    return IndexSpec(
        name=name,
        namespace=namespace,
        auth=parse_auth(raw, mode="token"),
        tls=TLS(dns_names=tuple(tls_raw.get("dnsNames") or ()), ip_addresses=tuple(tls_raw.get("ipAddresses") or ())),
    )


def _s3(raw: Mapping[str, Any] | None) -> S3 | None:
    if raw is None:
        return None
    ref = raw.get("credentialsSecretRef")
    account = raw.get("serviceAccountName")
    return S3(
        bucket=raw["bucket"],
        region=raw.get("region") or "us-east-1",
        endpoint=raw.get("endpoint") or None,
        force_path_style=bool(raw.get("forcePathStyle", False)),
        root_directory=raw.get("rootDirectory") or None,
        credentials=S3Credentials(
            object_name(ref["name"], "storage.s3.credentialsSecretRef.name"),
            ref.get("accessKeyIdKey") or "accessKeyId",
            ref.get("secretAccessKeyKey") or "secretAccessKey",
        ) if ref else None,
        service_account=object_name(account, "storage.s3.serviceAccountName") if account else None,
        redirect=bool(raw.get("redirect", False)),
    )


def _garbage_collection(raw: Mapping[str, Any], version: str, collectable: bool) -> GarbageCollection:
    """The GC settings; the same refusals as the CRD's rules, for a CRD installed without them."""
    gc = GarbageCollection(
        schedule=raw.get("schedule"),
        delete_untagged=bool(raw.get("deleteUntagged", False)),
        dry_run=bool(raw.get("dryRun", False)),
    )
    if raw and not collectable:
        raise ValueError("garbageCollection needs storage.persistentVolumeClaim or storage.s3 (a Job cannot see "
                         "an emptyDir)")
    if gc.delete_untagged and version == "2.8":
        # distribution issue 3178: before 3.0 it deletes the children of multi-arch indexes.
        raise ValueError("garbageCollection.deleteUntagged needs version 3 (2.8 breaks multi-arch images)")
    if gc.schedule is not None:
        cron.Cron.parse(gc.schedule)  # raises ValueError naming the bad field
    return gc


def parse_retention(raw: Mapping[str, Any] | None) -> Retention | None:
    """`spec.retention`, with the same refusals as the CRD's rules, for a CRD installed without them (and for
    the retention step of the GC Job, which is handed the same mapping)."""
    if raw is None:
        return None
    newest, younger = raw.get("keepNewest"), raw.get("keepYoungerThan")
    if newest is None and younger is None:
        raise ValueError("retention needs keepNewest or keepYoungerThan (else every tag would go)")
    if newest is not None and int(newest) < 1:
        raise ValueError("retention.keepNewest must be at least 1")
    return Retention(
        repositories=tuple(raw.get("repositories") or ("*",)),
        keep_newest=int(newest) if newest is not None else None,
        keep_younger_than=parse_duration(younger) if younger is not None else None,
        keep_tags=tuple(raw.get("keepTags") or ()),
        dry_run=bool(raw.get("dryRun", False)),
    )


def _retention(raw: Mapping[str, Any] | None, gc: bool, delete_enabled: bool, auth: Auth) -> Retention | None:
    """A pull-through cache is refused through `gc`: garbageCollection is refused there (`_proxy`)."""
    retention = parse_retention(raw)
    if retention is None:
        return None
    if auth.index is not None:
        raise ValueError("retention needs the Registry's own users: a Registry joined to a RegistryIndex "
                         "(auth.indexRef) has no retention robot the index would grant deletes to")
    if not gc:
        raise ValueError("retention needs garbageCollection: it runs as the first step of each collection")
    if not delete_enabled:
        raise ValueError("retention needs storage.deleteEnabled: it deletes manifests through the registry API")
    return retention


_REMOTE_URL = re.compile(r"https?://[^\s/?#@]+/?")


def _proxy(raw: Mapping[str, Any] | None, version: str, auth: Auth, gc: bool) -> Proxy | None:
    """`spec.proxy`, with the same refusals as the CRD's rules, for a CRD installed without them."""
    if raw is None:
        return None
    url = raw.get("remoteURL")
    if not isinstance(url, str) or not _REMOTE_URL.fullmatch(url):
        raise ValueError(f"proxy.remoteURL {url!r} is not http(s)://host[:port]")
    ttl = raw.get("ttl")
    if ttl is not None:
        if version == "2.8":
            raise ValueError("proxy.ttl needs version 3 (2.8 keeps cached content for 7 days)")
        parse_duration(ttl)
    if gc:
        raise ValueError("garbageCollection does not apply to a pull-through cache (it expires content by ttl)")
    if any(a != "pull" for rule in auth.access for a in rule.actions):
        raise ValueError("auth.access may grant only pull on a pull-through cache (it refuses pushes and deletes)")
    credentials = raw.get("credentialsSecretName")
    ca = raw.get("caSecretName")
    return Proxy(
        remote_url=url.rstrip("/"),
        credentials_secret=object_name(credentials, "proxy.credentialsSecretName") if credentials else None,
        ca_secret=object_name(ca, "proxy.caSecretName") if ca else None,
        ttl=ttl,
    )


def _pull_secrets(raw: Mapping[str, Any] | None, auth: Auth) -> PullSecrets | None:
    if raw is None:
        return None
    if auth.index is not None:
        raise ValueError(PULL_SECRETS_JOINED)
    selector = raw.get("namespaceSelector")
    return PullSecrets(
        namespaces=tuple(sorted(set(raw.get("namespaces") or ()))),
        selector=dict(selector) if selector is not None else None,
        service_accounts=tuple(sorted(set(raw.get("serviceAccounts") or ("default",)))),
    )


def _redis(raw: Mapping[str, Any] | None, persistent: bool) -> Redis | None:
    """The Redis cache; refused on an emptyDir (as by the CRD): a new pod starts with empty storage while the
    cache still describes the old pod's blobs."""
    if raw is None:
        return None
    if not persistent:
        raise ValueError("redis needs storage.persistentVolumeClaim or storage.s3 (an emptyDir is lost with its pod)")
    ref = raw.get("passwordSecretRef")
    return Redis(
        address=str(raw["address"]),
        db=int(raw.get("db", 0)),
        password_ref=(
            SecretKeyRef(object_name(ref["name"], "redis.passwordSecretRef.name"), ref.get("key") or "password")
            if ref else None
        ),
    )


def parse(name: str, namespace: str, raw: Mapping[str, Any] | None) -> RegistrySpec:
    """Build the typed spec, applying the same defaults as the CRD schema."""
    raw = raw or {}
    version = str(raw.get("version") or DEFAULT_VERSION)
    auth_raw = raw.get("auth") or {}
    tls_raw = raw.get("tls") or {}
    storage_raw = raw.get("storage") or {}
    service_raw = raw.get("service") or {}
    claim_raw = storage_raw.get("persistentVolumeClaim")
    auth = parse_auth(auth_raw)
    s3 = _s3(storage_raw.get("s3"))
    if s3 is not None and (claim_raw is not None or "emptyDir" in storage_raw):
        raise ValueError("set exactly one of storage.emptyDir, storage.persistentVolumeClaim and storage.s3")
    return RegistrySpec(
        name=name,
        namespace=namespace,
        version=version,
        image=raw.get("image") or IMAGES.get(version, IMAGES[DEFAULT_VERSION]),
        replicas=int(raw.get("replicas", 1)),
        read_only=bool(raw.get("readOnly", False)),
        log_level=raw.get("logLevel") or "info",
        storage=Storage(
            claim=Claim(
                size=claim_raw.get("size") or "10Gi",
                storage_class=claim_raw.get("storageClassName"),
                access_modes=tuple(claim_raw.get("accessModes") or ("ReadWriteOnce",)),
                reclaim_policy=claim_raw.get("reclaimPolicy") or "Retain",
            )
            if claim_raw is not None
            else None,
            empty_dir_size_limit=(storage_raw.get("emptyDir") or {}).get("sizeLimit"),
            delete_enabled=bool(storage_raw.get("deleteEnabled", False)),
            s3=s3,
        ),
        service=Service(
            type=service_raw.get("type") or "ClusterIP",
            port=int(service_raw.get("port") or DEFAULT_PORT),
            node_port=service_raw.get("nodePort"),
            annotations=dict(service_raw.get("annotations") or {}),
        ),
        tls=TLS(
            mode=tls_raw.get("mode") or "SelfSigned",
            secret_name=object_name(tls_raw["secretName"], "tls.secretName") if tls_raw.get("secretName") else None,
            dns_names=tuple(tls_raw.get("dnsNames") or ()),
            ip_addresses=tuple(tls_raw.get("ipAddresses") or ()),
        ),
        auth=auth,
        resources=dict(raw.get("resources") or {}),
        node_selector=dict(raw.get("nodeSelector") or {}),
        tolerations=tuple(raw.get("tolerations") or ()),
        affinity=dict(raw.get("affinity") or {}),
        pod_annotations=dict(raw.get("podAnnotations") or {}),
        pod_labels=dict(raw.get("podLabels") or {}),
        network_policy=NetworkPolicy(
            enabled=bool((raw.get("networkPolicy") or {}).get("enabled", True)),
            peers=tuple((raw.get("networkPolicy") or {}).get("from") or ()),
        ),
        garbage_collection=_garbage_collection(
            raw.get("garbageCollection") or {}, version, claim_raw is not None or s3 is not None),
        pull_secrets=_pull_secrets(raw.get("pullSecrets"), auth),
        proxy=_proxy(raw.get("proxy"), version, auth, raw.get("garbageCollection") is not None),
        node_trust=bool((raw.get("nodeTrust") or {}).get("enabled", False)),
        redis=_redis(raw.get("redis"), claim_raw is not None or s3 is not None),
        retention=_retention(raw.get("retention"), raw.get("garbageCollection") is not None,
                             bool(storage_raw.get("deleteEnabled", False)), auth),
    )
