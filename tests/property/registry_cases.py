"""Hypothesis strategies for Registry inputs: the spec a user sends plus the objects around it.

Shapes follow crds/registries.yaml, and every field mixes three kinds of values on purpose: ordinary ones, the
ones users really send that the operator has been seen to mishandle (user `ci@corp`, a 58-character token-mode
name, `cpu: 1`, `1024Mi`), and values the schema must refuse. A `Case` also carries what the spec refers to
(password and TLS Secrets, present, broken or missing) and unrelated objects that already use a child's name.

Values that only an environment can satisfy are kept satisfiable, because no operator can judge them and the
property would then measure the environment: node selectors and required affinities match the kwok nodes,
resource requests fit them, and a claim uses the default StorageClass (kwok binds only its claims).
"""

from __future__ import annotations

import base64
import functools
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from registry_operator import pki

Draw = Callable[[st.SearchStrategy[Any]], Any]
Json = Any


@dataclass(frozen=True)
class SecretSeed:
    """A Secret to create before the Registry (values are raw bytes, encoded when created)."""

    name: str
    data: Mapping[str, bytes]
    type: str = "Opaque"

    def manifest(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": self.type,
            "metadata": {"name": self.name, "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in self.data.items()},
        }


@dataclass(frozen=True)
class Squatter:
    """An object the user made that happens to carry the name of one of the Registry's children."""

    kind: str  # Service | Secret | ConfigMap
    name: str

    def manifest(self, namespace: str) -> dict[str, Any]:
        meta = {"name": self.name, "namespace": namespace, "labels": {"owner": "someone-else"}}
        if self.kind == "Service":
            return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                    "spec": {"ports": [{"port": 80, "name": "web"}], "selector": {"app": "web"}}}
        if self.kind == "Secret":
            return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"k": "dg=="}}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


@dataclass(frozen=True)
class Case:
    """One generated input: a Registry named `name` with `spec`, plus the objects to create first."""

    name: str
    spec: Json
    secrets: tuple[SecretSeed, ...] = ()
    squatters: tuple[Squatter, ...] = ()
    flaw: str | None = None  # where a dirty case carries its one flaw (FLAWS), None for a clean case

    def manifest(self, namespace: str) -> dict[str, Any]:
        return {"apiVersion": "registry.operator.dev/v1alpha1", "kind": "Registry",
                "metadata": {"name": self.name, "namespace": namespace}, "spec": self.spec}

    def localized(self, prefix: str) -> Case:
        """The same case with its Secrets renamed `<prefix><name>`, so cases can share a namespace."""
        renames = {s.name: prefix + s.name for s in self.secrets}

        def ref(name: Any) -> Any:
            return renames.get(name, name) if isinstance(name, str) else name

        spec = _deep_copy(self.spec)
        if isinstance(spec, dict):
            for user in _list(_dict(spec.get("auth")).get("users")):
                if isinstance(user, dict) and isinstance(user.get("passwordSecretRef"), dict):
                    user["passwordSecretRef"]["name"] = ref(user["passwordSecretRef"].get("name"))
            tls = _dict(spec.get("tls"))
            if "secretName" in tls:
                tls["secretName"] = ref(tls["secretName"])
            s3_ref = _dict(_dict(_dict(spec.get("storage")).get("s3")).get("credentialsSecretRef"))
            if "name" in s3_ref:
                s3_ref["name"] = ref(s3_ref["name"])
        secrets = tuple(replace(s, name=renames[s.name]) for s in self.secrets)
        return replace(self, spec=spec, secrets=secrets)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _deep_copy(value: Json) -> Json:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def sometimes(draw: Draw, one_in: int) -> bool:
    """True about once in `one_in` draws; False is the simpler choice that failures shrink to."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


# The places where a dirty case carries its one flaw (with how often, relative to 1): a value the schema must
# refuse, or that, if the schema lets it through, can only fail late. One flaw per case, so that no other
# invalid field masks a gap in the schema: a flaw the API server accepts then shows as what it is. Names,
# user names, Secret references (paths into another namespace among them) and quantities weigh more: they
# are what issue 9 found broken.
FLAWS = {
    "name": 8, "user-name": 3, "no-users": 1, "duplicate-user": 1, "secret-ref": 4, "secret-key": 1,
    "auth-mode": 1, "no-auth": 1, "group-name": 1, "action": 1, "repository": 1, "no-repository": 1,
    "rules-without-token": 1, "rule-without-subject": 1, "ttl": 2, "algorithm": 1, "realm": 1, "tls-mode": 1,
    "tls-secret": 3,
    "secret-name-without-secret-mode": 1, "dns-name": 1, "ip": 1, "size": 2, "access-mode": 1, "reclaim": 1,
    "both-storages": 1, "service-type": 1, "port": 1, "node-port": 1, "node-port-with-cluster-ip": 1,
    "service-annotations": 1, "pod-annotations": 1, "huge-pod-annotations": 2, "pod-labels": 1,
    "node-selector": 1, "tolerations": 2, "affinity": 2, "version": 1, "image": 2, "replicas": 1,
    "read-only": 1, "log-level": 1, "resources": 3, "typo": 1, "s3-bucket": 1, "s3-endpoint": 1,
    "s3-secret-ref": 2,
}
Flaw = str | None  # the one flawed place of a case, None for a clean case


def pick(good: Sequence[Any], bad: Sequence[Any], flaw: Flaw, site: str) -> st.SearchStrategy[Any]:
    """One of `bad` at the case's flawed site, else one of `good` (the first is what failures shrink to)."""
    return st.sampled_from(bad if flaw == site else good)


def include(draw: Draw, one_in: int, flaw: Flaw, *sites: str) -> bool:
    """Whether an optional field is present: always when the case's flaw lives in it, else about once in
    `one_in` cases."""
    return flaw in sites or sometimes(draw, one_in)


def one_of_weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Like st.one_of, with weights (a weight of 0 leaves an option out); failures shrink towards the first."""
    options = tuple(o for o in options if o[0] > 0)
    total = sum(w for w, _ in options)

    def chosen(roll: int) -> st.SearchStrategy[Any]:
        for weight, option in options:
            if roll < weight:
                return option
            roll -= weight
        raise AssertionError("unreachable")

    return st.integers(0, total - 1).flatmap(chosen)


def weighted(draw: Draw, options: Sequence[tuple[int, Any]]) -> Any:
    """Draw a value from `options` ((weight, value); weight 0 leaves it out); the first is what failures shrink
    to."""
    return draw(one_of_weighted(*((w, st.just(v)) for w, v in options)))


# ------------------------------------------------------------------------------------------------ names

_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
# Child-name suffixes (registry_operator.names.ChildNames): a Registry named like a sibling's child.
CHILD_SUFFIXES = ("-token", "-tls", "-ca", "-ca-key", "-data", "-config", "-passwords", "-htpasswd",
                  "-http-secret", "-token-tls", "-token-signing")
# A small pool of bases makes siblings (`web` next to `web-tls`) likely within one namespace.
BASES = ("web", "team", "ci", "mirror", "a", "reg", "builds")
# A namespace whose Secrets no Registry may read: a reference such as `../../prop-victim/secrets/db` must not
# reach them (the harness creates it with a password Secret `db` and a TLS Secret `web-tls`).
VICTIM_NAMESPACE = "prop-victim"


@st.composite
def dns_label(draw: Draw, min_size: int = 1, max_size: int = 63) -> str:
    """A DNS-1035 label of a drawn length: a lowercase letter, then lowercase alphanumerics and inner dashes."""
    size = draw(st.integers(min_size, max_size))
    chars = draw(st.lists(st.sampled_from(_LABEL_CHARS + "-"), min_size=size, max_size=size))
    text = "".join(chars)
    if not text[0].isalpha():
        text = "r" + text[1:]
    if text[-1] == "-":
        text = text[:-1] + "0"
    return text


@st.composite
def sized_name(draw: Draw, lo: int, hi: int, suffix: str = "") -> str:
    """A name of a drawn total length in [lo, hi] ending in `suffix` (one label: DNS-1123 allows 253)."""
    body = max(1, draw(st.integers(lo, hi)) - len(suffix))
    return draw(dns_label(body, body)) + suffix


def registry_name(flaw: Flaw) -> st.SearchStrategy[str]:
    """metadata.name: short names, siblings (`web-tls` next to `web`), long ones up to 57 (the longest a token
    Registry may have); flawed: 58-66 characters, a `-token` ending, up to 253, dots, invalid characters."""
    if flaw == "name":
        return one_of_weighted(
            (3, sized_name(58, 66)),
            (2, sized_name(52, 64, "-token")),
            (1, st.builds(lambda b: b + "-token", st.sampled_from(BASES))),
            (2, sized_name(64, 253)),
            (2, st.builds(lambda a, b: f"{a}.{b}", dns_label(1, 20), dns_label(1, 20))),
            (2, st.sampled_from(["x" * 254, "Web", "web_1", "-web", "9lives", "web-", "web.", "we b", "wéb",
                                 ".web", "web..x"])),
        )
    sibling_suffixes = ("",) + tuple(s for s in CHILD_SUFFIXES if s != "-token")
    return one_of_weighted(
        (6, st.builds(lambda b, s: b + s, st.sampled_from(BASES), st.sampled_from(sibling_suffixes))),
        (6, dns_label(1, 40)),
        (2, sized_name(41, 57)),
    )


# ------------------------------------------------------------------------------------------------ users

# Users really send these; the schema allows the first group (what they become as Secret keys and htpasswd
# lines is the operator's problem) and must refuse the second.
TRICKY_USERS = ("ci@corp", "first.last@example.com", "ci+bot@corp.example", "jürgen", "用户", ".", "..", "a..b",
                "-", "_", "@", "+", "Alice", "x" * 64)
BAD_USERS = ("a b", " alice", "a:b", "#alice", "x" * 65, "", "a/b", "tab\tname", "a=b")


def schema_user(name: str) -> bool:
    """The schema's user name: 1-64 letters (with marks) and digits of any script, or one of `._@+-`."""
    return 1 <= len(name) <= 64 and all(unicodedata.category(c)[0] in "LMN" or c in "._@+-" for c in name)


def user_name(flawed: bool = False) -> st.SearchStrategy[str]:
    """Mostly plain names, a quarter the tricky ones users send (e-mails, dots, other scripts); flawed: one the
    schema must refuse (spaces, colons, punctuation, 65 characters, arbitrary text; unassigned code points are
    left out, as Go's and Python's Unicode tables may differ there)."""
    if flawed:
        return st.one_of(st.sampled_from(BAD_USERS), st.text(
            alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cn")), min_size=1, max_size=70).filter(
            lambda t: not schema_user(t)))
    return one_of_weighted(
        (14, st.sampled_from(("alice", "bob", "ci", "deploy-bot", "robot_1", "r"))),
        (6, st.sampled_from(TRICKY_USERS)),
        (2, st.from_regex(r"[A-Za-z0-9._@-]{1,64}", fullmatch=True)),
    )


def password_data(draw: Draw, key: str) -> dict[str, bytes] | None:
    """Content of a referenced password Secret: usable, or broken in a way users manage to break it (None:
    the Secret does not exist). These are runtime problems the schema cannot see: clean cases have them."""
    return weighted(draw, [
        (8, {key: b"correct-horse-battery"}),
        (1, None),
        (1, {"other": b"pw"}),  # the key is missing
        (1, {key: b"p" * 73}),  # over bcrypt's 72 bytes
        (1, {key: b"line\nbreak"}),
        (1, {key: b""}),
        (1, {key: b"\xff\xfe not utf-8"}),
    ])


# The path into another namespace twice: it is the one that matters most.
BAD_SECRET_NAMES = ("Bad_Name", "a/b", "x" * 254, "", f"../../{VICTIM_NAMESPACE}/secrets/db",
                    f"../../{VICTIM_NAMESPACE}/secrets/db", "..")


@st.composite
def users(draw: Draw, flaw: Flaw) -> tuple[list[Json], list[SecretSeed]]:
    """auth.users and the password Secrets they refer to; flawed: no user at all, one listed twice, a name the
    schema must refuse, a reference no Secret can satisfy (`a/b`, a path into another namespace), a bad key."""
    out: list[Json] = []
    seeds: list[SecretSeed] = []
    count = 0 if flaw == "no-users" else draw(st.integers(1, 4))
    names = draw(st.lists(user_name(), min_size=count, max_size=count, unique=True))
    if flaw == "user-name":
        names[draw(st.integers(0, count - 1))] = draw(user_name(flawed=True))
    if flaw == "duplicate-user":
        names.append(names[0])
    flawed_ref = draw(st.integers(0, count - 1)) if flaw in ("secret-ref", "secret-key") else -1
    for i, name in enumerate(names):
        user: dict[str, Json] = {"name": name}
        if i == flawed_ref or sometimes(draw, 3):
            secret = f"pw{i}"
            ref: dict[str, Json] = {"name": secret}
            key = "password"
            if i == flawed_ref and flaw == "secret-key":
                key = ref["key"] = draw(st.sampled_from(["Bad Key", "a" * 254, "", "a/b"]))
            elif draw(st.booleans()):
                key = ref["key"] = draw(st.sampled_from(["pass", "token", ".dot"]))
            if i == flawed_ref and flaw == "secret-ref":
                ref["name"] = draw(st.sampled_from(BAD_SECRET_NAMES))
            user["passwordSecretRef"] = ref
            # A key that no Secret can have ("Bad Key") is looked up in a Secret that has only "password".
            data = password_data(draw, key if re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key) else "password")
            if data is not None and ref["name"] == secret:
                seeds.append(SecretSeed(secret, data))
        out.append(user)
    return out, seeds


# ------------------------------------------------------------------------------------------------ values

# Canonical: stored exactly as written. Non-canonical: the API server stores another spelling (1024Mi -> 1Gi,
# 0.5 -> 500m, the number 1 -> "1"). CPU stays small so any combination fits the nodes.
CPU = {"canonical": ("100m", "250m", "500m", "1"), "non-canonical": ("0.5", "1000m", 1, 0.5, "0.25", "100000u")}
MEMORY = {"canonical": ("64Mi", "128Mi", "1Gi"), "non-canonical": ("1024Mi", "1e3", "2048Ki", "134217728", "1.5Gi")}
INVALID_QUANTITIES: tuple[Json, ...] = ("garbage", "-1", "1.5.5", "10 Mi", "1Mib", "", "0x10", True, "1e3e3",
                                        {"a": 1}, ["1"])


@st.composite
def resources(draw: Draw, flaw: Flaw) -> Json:
    """Container resources: all canonical or all non-canonical; flawed: invalid quantities, a limit below its
    request, a resource that does not exist, a typo, not a map."""
    flawed = flaw == "resources"
    profile = weighted(draw, [(3 * (not flawed), "canonical"), (3 * (not flawed), "non-canonical"),
                              (4 * flawed, "invalid"), (flawed, "limit below request"),
                              (flawed, "unknown resource"), (flawed, "typo"), (flawed, "not a map")])
    if profile in ("canonical", "non-canonical", "invalid"):
        def value(kind: dict[str, tuple[Json, ...]]) -> st.SearchStrategy[Json]:
            return st.sampled_from(kind[profile] if profile != "invalid" else INVALID_QUANTITIES)

        side = draw(st.fixed_dictionaries({"cpu": value(CPU)}, optional={"memory": value(MEMORY)}))
        which = draw(st.sampled_from(["requests", "limits", "both"]))
        return {"requests": side, "limits": dict(side)} if which == "both" else {which: side}
    return {
        "limit below request": {"requests": {"cpu": "500m"}, "limits": {"cpu": "100m"}},
        "unknown resource": {"requests": {"gpu": "1"}},
        "typo": {"request": {"cpu": "100m"}},  # an unknown field of the container's resources
        "not a map": {"requests": "1"},
    }[profile]


ANNOTATION_KEYS = (("team", "example.com/owner", "prometheus.io/scrape", "kubernetes.io/" + "y" * 63),
                   ("bad key", "a/b/c", "x" * 64, "ünï"))
LABEL_KEYS = (("team", "app.kubernetes.io/instance", "app.kubernetes.io/name"), ("bad key", "x" * 64))


@st.composite
def string_map(draw: Draw, keys: tuple[Sequence[str], Sequence[str]], flawed: bool, huge: bool = False,
               bad_values: Sequence[str] = ()) -> dict[str, str]:
    """Annotations or labels; flawed: a bad key, a bad value (labels), or (`huge`) far past the 256 KiB an
    object's annotations may hold."""
    good_keys, bad_keys = keys
    out = {k: draw(st.sampled_from(["v", "", "true", "x" * 63]))
           for k in draw(st.lists(st.sampled_from(good_keys), max_size=3, unique=True))}
    if flawed and huge:
        out["example.com/blob"] = "z" * draw(st.sampled_from([100 * 1024, 300 * 1024]))
    elif flawed and bad_values and draw(st.booleans()):
        out[draw(st.sampled_from(good_keys))] = draw(st.sampled_from(bad_values))
    elif flawed:
        out[draw(st.sampled_from(bad_keys))] = "v"
    return out


TTLS = ("5m", "60s", "24h", "1h30m", "90s", "1m0s", "23h59m60s", "2h")
BAD_TTLS = ("59s", "24h1s", "0s", "1d", "5 m", "", "300", "1.5h", "100ms", "5M")
TOKEN_FLAWS = ("group-name", "action", "repository", "no-repository", "rule-without-subject", "ttl", "algorithm",
               "realm")


@st.composite
def auth(draw: Draw, flaw: Flaw) -> tuple[Json, list[SecretSeed]]:
    """auth, with rules that name unknown users and groups (a runtime problem), and the password Secrets."""
    if flaw in TOKEN_FLAWS:
        mode = "token"
    elif flaw == "auth-mode":
        mode = draw(st.sampled_from(["basic", "Token", ""]))
    elif flaw == "no-users":
        mode = draw(st.sampled_from(["htpasswd", "token", None]))
    elif flaw == "rules-without-token":
        mode = draw(st.sampled_from(["htpasswd", "none", None]))
    else:
        mode = weighted(draw, [(6, "htpasswd"), (4, "token"), (1, "none"), (1, None)])
    user_list, seeds = draw(users(flaw))
    out: dict[str, Json] = {}
    if mode is not None:
        out["mode"] = mode
    if user_list or flaw == "no-users" or sometimes(draw, 5):
        out["users"] = user_list
    names = [u["name"] for u in user_list] or ["alice"]
    if mode == "token" or flaw == "rules-without-token":
        known_or_not = st.one_of(st.sampled_from(names), user_name())
        group_list = draw(st.lists(st.sampled_from(["devs", "ops", "g"]), max_size=2, unique=True,
                                   min_size=1 if flaw in ("group-name", "rules-without-token") else 0))
        if flaw == "group-name":
            group_list[0] = draw(st.sampled_from(["bad group", "", "x" * 65]))
        groups = [{"name": g, "users": draw(st.lists(known_or_not, max_size=3, unique=True))} for g in group_list]
        if groups:
            out["groups"] = groups
        group_names = [g["name"] for g in groups] or ["devs"]
        rules = []
        rule_flaw = flaw in ("action", "repository", "no-repository", "rule-without-subject")
        for i in range(draw(st.integers(1 if rule_flaw else 0, 3))):
            actions = draw(st.lists(st.sampled_from(["pull", "push", "delete", "*"]), min_size=1, max_size=3,
                                    unique=True))
            if flaw == "action" and i == 0:
                actions = draw(st.sampled_from([["write"], [], ["pull", "pull", "push", "delete", "*"]]))
            rule: dict[str, Json] = {"actions": actions}
            who = 3 if flaw == "rule-without-subject" and i == 0 else draw(st.integers(0, 2))
            if who == 0:
                rule["users"] = draw(st.lists(known_or_not, min_size=1, max_size=2))
            elif who == 1:
                rule["groups"] = draw(st.lists(st.sampled_from(group_names + ["nobody"]), min_size=1, max_size=2))
            elif who == 2:
                rule["anonymous"] = True
            if not (flaw == "no-repository" and i == 0):
                repositories = draw(st.lists(st.sampled_from(["*", "team-a/*", "library/app"]), min_size=1,
                                             max_size=2))
                if flaw == "repository" and i == 0:
                    repositories[0] = draw(st.sampled_from(["Upper/Case", "a b", ""]))
                rule["repositories"] = repositories
            if sometimes(draw, 4):
                rule["catalog"] = True
            rules.append(rule)
        if rules:
            out["access"] = rules
        if include(draw, 2, flaw, "ttl"):
            out["tokenTTL"] = draw(pick(TTLS, BAD_TTLS, flaw, "ttl"))
        if include(draw, 4, flaw, "algorithm"):
            out["tokenAlgorithm"] = draw(pick(["ES256", "RS256"], ["HS256", "es256"], flaw, "algorithm"))
        if include(draw, 6, flaw, "realm"):
            out["tokenRealm"] = draw(pick(["https://auth.example.com/token", "http://10.0.0.9:5001/token"],
                                          ["ftp://x", "auth.example.com", "https://" + "x" * 1020], flaw, "realm"))
    return out, seeds


@functools.cache
def tls_material() -> dict[str, dict[str, bytes]]:
    """User TLS Secret contents, made once: a valid pair with its CA, a mismatched pair, and unusable ones."""
    ca = pki.issue_ca("property-test user CA")
    server = pki.issue_server(ca, ["registry.example.internal"])
    other = pki.issue_server(ca, ["other.example.internal"])
    return {
        "valid": {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem},
        "mismatched": {"tls.crt": server.cert_pem, "tls.key": other.key_pem},
        "garbage": {"tls.crt": b"-----BEGIN CERTIFICATE-----\nnope\n", "tls.key": b"nope"},
        "no-key": {"tls.crt": server.cert_pem},
    }


@st.composite
def tls(draw: Draw, flaw: Flaw) -> tuple[Json, list[SecretSeed]]:
    """tls, and the user TLS Secret it names: valid, mismatched, garbage, without key, or missing."""
    out: dict[str, Json] = {}
    seeds: list[SecretSeed] = []
    if flaw == "tls-mode":
        mode = draw(st.sampled_from(["Auto", "selfsigned", ""]))
    elif flaw == "tls-secret":
        mode = "Secret"
    elif flaw == "secret-name-without-secret-mode":
        mode = draw(st.sampled_from(["SelfSigned", "Disabled", None]))
    else:
        mode = weighted(draw, [(5, None), (3, "SelfSigned"), (3, "Secret"), (2, "Disabled")])
    if mode is not None:
        out["mode"] = mode
    if mode == "Secret" or flaw == "secret-name-without-secret-mode":
        out["secretName"] = draw(pick(["tls"], [f"../../{VICTIM_NAMESPACE}/secrets/web-tls", "a/b", "Bad_Name"],
                                      flaw, "tls-secret"))
        content = weighted(draw, [(5, "valid"), (1, "mismatched"), (1, "garbage"), (1, "no-key"), (1, "missing")])
        if content != "missing" and out["secretName"] == "tls":
            kind = "kubernetes.io/tls" if content != "no-key" else "Opaque"
            seeds.append(SecretSeed("tls", tls_material()[content], kind))
    if include(draw, 4, flaw, "dns-name"):
        names = draw(st.lists(st.sampled_from(["registry.example.internal", "*.example.internal", "localhost"]),
                              max_size=3, unique=True))
        if flaw == "dns-name":
            names.append(draw(st.sampled_from(["Upper.example", "a_b.example", "x" * 254, "*"])))
        out["dnsNames"] = names
    if include(draw, 6, flaw, "ip"):
        ips = draw(st.lists(st.sampled_from(["10.1.2.3", "::1", "127.0.0.1"]), max_size=2, unique=True))
        if flaw == "ip":
            ips.append(draw(st.sampled_from(["999.1.1.1", "not-an-ip", "fe80::1%eth0"])))
        out["ipAddresses"] = ips
    return out, seeds


@st.composite
def s3(draw: Draw, flaw: Flaw) -> tuple[Json, list[SecretSeed]]:
    """storage.s3 and its credentials Secret: present, missing, lacking a key, or a path-like reference."""
    out: dict[str, Json] = {"bucket": draw(pick(["images", "my.registry-bucket", "a" * 63],
                                                ["Images", "ab", "-bad", "a" * 64, "bad_bucket"], flaw, "s3-bucket"))}
    if include(draw, 2, flaw, "s3-endpoint"):
        out["endpoint"] = draw(pick(["https://s3.example:9000", "http://minio.storage.svc:9000", "https://s3.x/p"],
                                    ["ftp://s3.example", "s3.example", "https://", "http://a b"], flaw, "s3-endpoint"))
    if sometimes(draw, 3):
        out["region"] = draw(st.sampled_from(["eu-west-1", "us-east-1"]))
    if sometimes(draw, 2):
        out["forcePathStyle"] = draw(st.booleans())
    if sometimes(draw, 3):
        out["rootDirectory"] = draw(st.sampled_from(["/team", "a/b", "/x/"]))
    if sometimes(draw, 3):
        out["serviceAccountName"] = "registry-s3"
    seeds: list[SecretSeed] = []
    if flaw == "s3-secret-ref" or draw(st.booleans()):
        name = draw(st.sampled_from(BAD_SECRET_NAMES)) if flaw == "s3-secret-ref" else "s3keys"
        out["credentialsSecretRef"] = {"name": name}
        # Runtime problems the schema cannot see: the Secret missing, a key missing or empty.
        data = weighted(draw, [(6, {"accessKeyId": b"AKIAPROPERTY", "secretAccessKey": b"s3cr3t"}), (1, None),
                               (1, {"accessKeyId": b"AKIAPROPERTY"}),
                               (1, {"accessKeyId": b"", "secretAccessKey": b"x"})])
        if data is not None and name == "s3keys":
            seeds.append(SecretSeed(name, data))
    return out, seeds


@st.composite
def storage(draw: Draw, flaw: Flaw) -> tuple[Json | None, bool, list[SecretSeed]]:
    """(storage, whether several pods may share it: a ReadWriteMany claim or a bucket, the Secrets it names)."""
    size = pick(["10Gi", "1Gi", "500Mi", "1024Mi", "1.5Gi"], ["0", "1e3", "10GB", "", "-1Gi"], flaw, "size")
    if flaw == "both-storages":
        kinds = draw(st.sampled_from([("emptyDir", "claim"), ("s3", "claim"), ("emptyDir", "s3")]))
    elif flaw in ("access-mode", "reclaim"):
        kinds = ("claim",)
    elif flaw == "size":
        kinds = (draw(st.sampled_from(["emptyDir", "claim"])),)
    elif flaw in ("s3-bucket", "s3-endpoint", "s3-secret-ref"):
        kinds = ("s3",)
    else:
        kinds = (weighted(draw, [(4, "none"), (2, "emptyDir"), (3, "claim"), (2, "s3")]),)
    if kinds == ("none",):
        return None, False, []
    out: dict[str, Json] = {}
    rwx = False
    seeds: list[SecretSeed] = []
    if "s3" in kinds:
        out["s3"], seeds = draw(s3(flaw))
        rwx = True
    if "emptyDir" in kinds:
        out["emptyDir"] = {"sizeLimit": draw(size)} if flaw == "size" or draw(st.booleans()) else {}
    if "claim" in kinds:
        modes = draw(st.lists(st.sampled_from(["ReadWriteOnce", "ReadWriteMany"]), max_size=2, unique=True))
        if flaw == "access-mode":
            modes = draw(st.sampled_from([["ReadOnly"], ["ReadWriteMany", "ReadWriteOncePod"], []]))
        claim: dict[str, Json] = {}
        if flaw == "size" and "emptyDir" not in out or draw(st.booleans()):
            claim["size"] = draw(size)
        if include(draw, 2, flaw, "reclaim"):
            claim["reclaimPolicy"] = draw(pick(["Retain", "Delete"], ["Keep", "retain"], flaw, "reclaim"))
        if modes or flaw == "access-mode":
            claim["accessModes"] = modes
        rwx = rwx or "ReadWriteMany" in modes
        out["persistentVolumeClaim"] = claim
    if draw(st.booleans()):
        out["deleteEnabled"] = draw(st.booleans())
    return out, rwx, seeds


@st.composite
def service(draw: Draw, flaw: Flaw) -> Json:
    """service: every type, ports, node ports (any two may collide: a refused write), annotations."""
    out: dict[str, Json] = {}
    if flaw == "service-type":
        kind = draw(st.sampled_from(["External", "nodeport", ""]))
    elif flaw == "node-port-with-cluster-ip":
        kind = draw(st.sampled_from(["ClusterIP", None]))
    else:
        kind = weighted(draw, [(4, None), (2, "ClusterIP"), (2, "NodePort"), (1, "LoadBalancer")])
    if kind is not None:
        out["type"] = kind
    if include(draw, 4, flaw, "port"):
        out["port"] = draw(pick([5000, 443, 1, 65535], [0, 65536, -1], flaw, "port"))
    if flaw in ("node-port", "node-port-with-cluster-ip") or (kind in ("NodePort", "LoadBalancer")
                                                             and sometimes(draw, 3)):
        out["nodePort"] = draw(st.sampled_from([29999, 32768, 5000]) if flaw == "node-port"
                               else st.integers(30000, 32767))
    if include(draw, 6, flaw, "service-annotations"):
        out["annotations"] = draw(string_map(ANNOTATION_KEYS, flaw == "service-annotations"))
    return out


@st.composite
def pod_placement(draw: Draw, flaw: Flaw) -> dict[str, Json]:
    """nodeSelector, tolerations and affinity that the kwok nodes satisfy; flawed: malformed ones."""
    out: dict[str, Json] = {}
    if include(draw, 6, flaw, "node-selector"):
        out["nodeSelector"] = draw(pick([{"type": "kwok"}, {"kubernetes.io/os": "linux"}, {}],
                                        [{"bad key": "x"}, {"type": "a b"}], flaw, "node-selector"))
    if include(draw, 6, flaw, "tolerations"):
        out["tolerations"] = draw(pick(
            [[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]],
            [[{"operator": "Sometimes"}], [{"key": "k", "operator": "Exists", "value": "v"}],
             [{"key": "k", "tolerationSeconds": "soon"}]], flaw, "tolerations"))
    if include(draw, 8, flaw, "affinity"):
        out["affinity"] = draw(pick(
            [{"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": "type", "operator": "In", "values": ["kwok"]}]}}]}}],
            [{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
             {"podAntiAffinity": "yes"}, {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                 {"weight": 1000, "preference": {}}]}}], flaw, "affinity"))
    return out


@st.composite
def cases(draw: Draw) -> Case:
    """One Registry input: spec, the Secrets it refers to, and name squatters.

    About half the cases are clean: every value is one the schema should accept, including the tricky ones
    users really send (ci@corp, `.`, 57-character names, siblings, non-canonical quantities) and runtime
    problems (missing or broken Secrets, rules naming unknown users, squatters). The others carry exactly one
    flaw (FLAWS): a value the schema must refuse, or one that fails late if the schema lets it through."""
    flaw: Flaw = weighted(draw, [(w, f) for f, w in FLAWS.items()]) if draw(st.integers(0, 19)) >= 9 else None
    name = draw(registry_name(flaw))
    auth_spec, auth_seeds = draw(auth(flaw))
    tls_spec, tls_seeds = draw(tls(flaw))
    storage_spec, rwx, storage_seeds = draw(storage(flaw))
    spec: dict[str, Json] = {}
    if flaw != "no-auth":
        spec["auth"] = auth_spec
    if tls_spec or draw(st.booleans()):
        spec["tls"] = tls_spec
    if storage_spec is not None:
        spec["storage"] = storage_spec
    if include(draw, 3, flaw, "service-type", "port", "node-port", "node-port-with-cluster-ip",
               "service-annotations"):
        spec["service"] = draw(service(flaw))
    if include(draw, 4, flaw, "version"):
        spec["version"] = draw(pick(["3", "2.8"], ["2", "latest", 3], flaw, "version"))
    if include(draw, 8, flaw, "image"):
        spec["image"] = draw(pick(
            ["mirror.example.com/library/registry:3.1.2", "registry@sha256:" + "a" * 64, "UPPER/Case:tag"],
            ["", " registry:3", "registry:3 ", "x" * 513, "registry:3\n"], flaw, "image"))
    if include(draw, 4, flaw, "replicas"):
        # Several pods only with a ReadWriteMany claim or a bucket: kept small so they fit the nodes.
        spec["replicas"] = draw(pick([1, 2, 3] if rwx else [1], [0, 21, -1] if rwx else [2, 0, 21, -1], flaw,
                                     "replicas"))
    if include(draw, 6, flaw, "read-only"):
        spec["readOnly"] = draw(pick([True, False], ["yes", 1], flaw, "read-only"))
    if include(draw, 6, flaw, "log-level"):
        spec["logLevel"] = draw(pick(["error", "warn", "info", "debug"], ["trace", "INFO"], flaw, "log-level"))
    if include(draw, 3, flaw, "resources"):
        spec["resources"] = draw(resources(flaw))
    if include(draw, 5, flaw, "pod-annotations", "huge-pod-annotations"):
        spec["podAnnotations"] = draw(string_map(ANNOTATION_KEYS, flaw in ("pod-annotations", "huge-pod-annotations"),
                                                 huge=flaw == "huge-pod-annotations"))
    if include(draw, 7, flaw, "pod-labels"):
        spec["podLabels"] = draw(string_map(LABEL_KEYS, flaw == "pod-labels", bad_values=("a b", "ü", "x" * 64)))
    spec.update(draw(pod_placement(flaw)))
    if flaw == "typo":
        spec[draw(st.sampled_from(["replica", "Auth", "tlsMode"]))] = 2
    squatters: tuple[Squatter, ...] = ()
    if sometimes(draw, 12):
        kind, suffix = draw(st.sampled_from([("Service", ""), ("Secret", "-tls"), ("ConfigMap", "-config"),
                                             ("Secret", "-passwords")]))
        squatters = (Squatter(kind, name + suffix),)
    return Case(name, spec, tuple(auth_seeds + tls_seeds + storage_seeds), squatters, flaw)


def mode_combinations() -> list[Case]:
    """Every combination of TLS, auth, Service and storage mode once, valid otherwise: random draws would
    leave some of the 54 out."""
    out = []
    short = {"SelfSigned": "ss", "Secret": "sec", "Disabled": "off", "ClusterIP": "cip", "NodePort": "np",
             "LoadBalancer": "lb", "emptyDir": "ed", "persistentVolumeClaim": "pvc"}
    for tls_mode in ("SelfSigned", "Secret", "Disabled"):
        for auth_mode in ("htpasswd", "token", "none"):
            for service_type in ("ClusterIP", "NodePort", "LoadBalancer"):
                for storage_kind in ("emptyDir", "persistentVolumeClaim"):
                    name = f"mode-{short[tls_mode]}-{auth_mode}-{short[service_type]}-{short[storage_kind]}"
                    spec: dict[str, Json] = {
                        "auth": {"mode": auth_mode, "users": [{"name": "alice"}, {"name": "ci@corp"}]},
                        "tls": {"mode": tls_mode} | ({"secretName": "tls"} if tls_mode == "Secret" else {}),
                        "service": {"type": service_type},
                        "storage": {storage_kind: {}},
                    }
                    secrets = (SecretSeed("tls", tls_material()["valid"], "kubernetes.io/tls"),) \
                        if tls_mode == "Secret" else ()
                    out.append(Case(name, spec, secrets))
    return out


def smaller(case: Case) -> list[Case]:
    """Every variant of `case` one step simpler: a top-level field left out, a field of tls, storage, service
    or resources left out, an auth field other than mode and users left out, one user of several left out, or
    the squatters gone. Shrinking a failing case walks these."""
    spec = _dict(case.spec)
    out = [replace(case, spec={k: v for k, v in spec.items() if k != key}) for key in spec if key != "auth"]
    for key in ("tls", "storage", "service", "resources", "auth"):
        part = _dict(spec.get(key))
        keep = ("mode", "users") if key == "auth" else ()
        out += [replace(case, spec={**spec, key: {k: v for k, v in part.items() if k != sub}})
                for sub in part if sub not in keep]
    users_list = _list(_dict(spec.get("auth")).get("users"))
    if len(users_list) > 1:
        out += [replace(case, spec={**spec, "auth": {**spec["auth"], "users": users_list[:i] + users_list[i + 1:]}})
                for i in range(len(users_list))]
    if case.squatters:
        out.append(replace(case, squatters=()))
    return out


# ------------------------------------------------------------------------------------------------ hazards

_INDEX = re.compile(r"\[\d+\]")


def hazards(case: Case) -> list[str]:
    """The known-troublesome traits of a case, for the report (which inputs ended how): its flaw, if dirty,
    and what clean cases may carry too."""
    out = [f"flaw {case.flaw}"] if case.flaw else []
    n = len(case.name)
    if n > 63:
        out.append("name > 63 chars")
    elif n >= 58 and _dict(_dict(case.spec).get("auth")).get("mode") == "token":
        out.append("token-mode name 58-63 chars")
    if case.name.endswith(CHILD_SUFFIXES):
        out.append("name ends like a child (-token, -tls, ...)")
    if "." in case.name:
        out.append("dotted name")
    spec = _dict(case.spec)
    auth_spec = _dict(spec.get("auth"))
    names = [u.get("name") for u in _list(auth_spec.get("users")) if isinstance(u, dict)]
    generated = [u.get("name") for u in _list(auth_spec.get("users"))
                 if isinstance(u, dict) and "passwordSecretRef" not in u]
    if any(isinstance(u, str) and not re.fullmatch(r"[-._a-zA-Z0-9]+", u) or u in (".", "..") for u in generated):
        out.append("generated-password user that is not a Secret key (@ . ..)")
    if len(names) != len(set(map(str, names))):
        out.append("duplicate users")
    resources_spec = spec.get("resources")
    flat = [v for side in _dict(resources_spec).values() if isinstance(side, dict) for v in side.values()]
    if any(v is True or (not isinstance(v, int | float) and v in INVALID_QUANTITIES) for v in flat):
        out.append("invalid quantity")
    elif any(v in CPU["non-canonical"] + MEMORY["non-canonical"] for v in flat):
        out.append("non-canonical quantity")
    blob = _dict(spec.get("podAnnotations")).get("example.com/blob", "")
    if len(blob) > 200 * 1024:
        out.append("podAnnotations > 256 KiB")
    if case.squatters:
        out.append("unrelated object has a child's name")
    refs = [_dict(u.get("passwordSecretRef")).get("name") for u in _list(auth_spec.get("users")) if isinstance(u, dict)]
    refs.append(_dict(spec.get("tls")).get("secretName"))
    refs.append(_dict(_dict(_dict(spec.get("storage")).get("s3")).get("credentialsSecretRef")).get("name"))
    if any(isinstance(r, str) and "/" in r for r in refs):
        out.append("Secret reference with '/' (a path)")
    return out


def field_of(path: str) -> str:
    """A field path with list indices folded (`spec.auth.users[2].name` -> `spec.auth.users[*].name`)."""
    return _INDEX.sub("[*]", path)
