"""What the fault tests create and what they compare: a mix of Registries, snapshots of the material the
operator generated, and checks that this material is one consistent set.

The snapshots are the proof of "material decided once": a Secret the operator generated keeps its UID (never
deleted and re-created) and its bytes (never regenerated) through faults and kills. Consistency is the proof
that a kill between two writes did not leave a certificate signed by a CA that was then replaced, or a
password whose hash is someone else's.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret

from registry_operator import names, pki
from registry_operator.kinds import Registry

MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
BOB_PASSWORD = "bob-referenced-pw-1"  # the referenced password of user bob (Secret bob-password)
BOB = {"name": "bob", "passwordSecretRef": {"name": "bob-password", "key": "password"}}
TOKEN_ACCESS = [{"users": ["alice"], "repositories": ["*"], "actions": ["pull", "push"]}]

# A mix of what the operator does: generated and referenced passwords, 2.8 and 3, token mode, SelfSigned TLS
# with extra names. Names are short and distinct as prefixes (writes are attributed by name prefix).
MIX: dict[str, dict[str, Any]] = {
    "gen-a": {"auth": {"users": [{"name": "alice"}]}},
    "gen-b": {"version": "2.8", "auth": {"users": [{"name": "alice"}, {"name": "dave"}]}},
    "ref-a": {"auth": {"users": [{"name": "alice"}, BOB]}},
    "ref-b": {"auth": {"users": [BOB]}},
    "tok-a": {"auth": {"mode": "token", "users": [{"name": "alice"}, {"name": "ci"}], "access": TOKEN_ACCESS}},
    "tok-b": {"auth": {"mode": "token", "users": [{"name": "alice"}, BOB], "access": TOKEN_ACCESS}},
    "tls-a": {"tls": {"mode": "SelfSigned", "dnsNames": ["tls-a.example.internal"], "ipAddresses": ["127.0.0.1"]},
              "auth": {"users": [{"name": "alice"}]}},
    "tls-b": {"version": "2.8", "tls": {"mode": "SelfSigned", "dnsNames": ["tls-b.example.internal"]},
              "auth": {"users": [{"name": "alice"}]}},
}  # fmt: skip


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def create_password_secret(client: Client, namespace: str) -> None:
    client.create(Secret(metadata=ObjectMeta(name="bob-password", namespace=namespace),
                         data={"password": b64(BOB_PASSWORD)}))  # fmt: skip


def create_registry(client: Client, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    client.create(Registry(metadata=ObjectMeta(name=name, namespace=namespace), spec=dict(spec)))


def patch_spec(client: Client, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    """A JSON merge patch of the Registry's spec, as `kubectl patch --type merge` does."""
    from lightkube.types import PatchType

    client.patch(Registry, name, {"spec": dict(patch)}, namespace=namespace, patch_type=PatchType.MERGE)


def add_user(client: Client, namespace: str, name: str, user: str) -> None:
    spec = client.get(Registry, name, namespace=namespace).to_dict()["spec"]
    users = [*spec["auth"]["users"], {"name": user}]
    patch_spec(client, namespace, name, {"auth": {**spec["auth"], "users": users}})


REPORT: list[str] = []


def report(line: str) -> None:
    """A measured number: printed now (visible with -s) and again in the session's terminal summary (conftest)."""
    print(line)
    REPORT.append(line)


# ------------------------------------------------------------------------------------------------ readiness


def is_ready(body: Mapping[str, Any]) -> bool:
    """Ready=True for the Registry's current generation."""
    generation = body["metadata"].get("generation", 1)
    status = body.get("status") or {}
    return status.get("observedGeneration") == generation and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )


def not_ready(client: Client, namespace: str, wanted: Iterable[str]) -> dict[str, str]:
    """Registry name -> why it is not Ready for its generation (empty when all are)."""
    bodies = {r.metadata.name: r.to_dict() for r in client.list(Registry, namespace=namespace)}
    out = {}
    for name in wanted:
        body = bodies.get(name)
        if body is None:
            out[name] = "missing"
        elif not is_ready(body):
            status = body.get("status") or {}
            ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
            out[name] = (
                f"generation {body['metadata'].get('generation')}, observed "
                f"{status.get('observedGeneration')}, Ready {ready.get('status')} {ready.get('reason')}"
            )
    return out


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> float:
    """Poll until `check()` returns True; returns the seconds it took. A check returns anything else to say
    what is still missing: on timeout that (or the last error) is in the failure message."""
    t0 = time.monotonic()
    last: Any = None
    while True:
        try:
            last = check()
            if last is True:
                return time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - the API may be briefly unreachable; keep polling
            last = exc
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        time.sleep(interval)


def all_ready(client: Client, namespace: str, wanted: Iterable[str]) -> Callable[[], bool | dict[str, str]]:
    """A `wait` check: True when every wanted Registry is Ready, else what is not (for the failure message)."""
    wanted = list(wanted)

    def check() -> bool | dict[str, str]:
        missing = not_ready(client, namespace, wanted)
        return missing or True

    return check


# ------------------------------------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class Stored:
    uid: str
    data: Mapping[str, str]  # base64, as the API returns it


def generated_secrets(client: Client, namespace: str) -> dict[str, Stored]:
    """Every Secret the operator labelled as its own in `namespace`: name -> (UID, data)."""
    return {s.metadata.name: Stored(s.metadata.uid, dict(s.data or {}))
            for s in client.list(Secret, namespace=namespace, labels=MANAGED)}  # fmt: skip


def inputs_hashes(client: Client, namespace: str) -> dict[str, str | None]:
    """Deployment name -> the pod-template inputs-hash annotation (what rolls the pods when it changes)."""
    out = {}
    for d in client.list(Deployment, namespace=namespace, labels=MANAGED):
        annotations = (d.spec.template.metadata.annotations or {}) if d.spec.template.metadata else {}
        out[d.metadata.name] = annotations.get(names.POD_INPUTS_HASH)
    return out


def htpasswd_text(stored: Stored | None) -> str:
    return base64.b64decode(stored.data.get("htpasswd", "")).decode() if stored else ""


def _lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line}


def _grew(old: str, new: str) -> bool:
    """Whether `new` only adds entries to `old`: keys of a JSON object (per-user fingerprints, the record of
    generated passwords), else lines (htpasswd)."""
    old_text, new_text = base64.b64decode(old).decode(), base64.b64decode(new).decode()
    try:
        before, after = json.loads(old_text), json.loads(new_text)
    except ValueError:
        return _lines(old_text) <= _lines(new_text)
    if isinstance(before, dict) and isinstance(after, dict):
        return all(k in after and after[k] == v for k, v in before.items())
    return False


def changes(before: Mapping[str, Stored], after: Mapping[str, Stored], grown: Iterable[str] = ()) -> list[str]:
    """What changed in the generated Secrets of `before`: a missing or re-created Secret, a changed value.

    Secrets in `grown` (those of a Registry that gained a user) may gain keys, htpasswd lines and entries of
    JSON records; everything that existed must stay byte-identical."""
    grown = set(grown)
    out = []
    for name, old in sorted(before.items()):
        new = after.get(name)
        if new is None:
            out.append(f"{name}: deleted")
            continue
        if new.uid != old.uid:
            out.append(f"{name}: re-created (UID {old.uid} -> {new.uid})")
        for key, value in sorted(old.data.items()):
            if new.data.get(key) == value:
                continue
            if name in grown and key in new.data and _grew(value, new.data[key]):
                continue
            out.append(f"{name}: key {key!r} {'removed' if key not in new.data else 'changed'}")
        if name not in grown and set(new.data) - set(old.data):
            out.append(f"{name}: keys added {sorted(set(new.data) - set(old.data))}")
    return out


# ------------------------------------------------------------------------------------------------ consistency


def _get_secret(client: Client, namespace: str, name: str) -> dict[str, bytes] | None:
    try:
        s = client.get(Secret, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return {k: base64.b64decode(v) for k, v in (s.data or {}).items()}


def _signed_by_one_of(cert_pem: bytes, bundle_pem: bytes) -> bool:
    leaf = pki.load_chain(cert_pem)[0]
    return any(pki.signed_by(leaf, ca) for ca in pki.load_chain(bundle_pem))


def inconsistencies(client: Client, namespace: str, registry: str, referenced: Mapping[str, str]) -> list[str]:
    """Why the stored material of `registry` is not one consistent set (empty when it is):

    - its serving and token-service certificates are signed by a CA published in `-ca` and kept in `-ca-key`;
    - every generated password in `-passwords` and every referenced password (`referenced`: user ->
      password) verifies against that user's line in `-htpasswd`."""
    n = names.ChildNames(registry)
    out: list[str] = []
    ca_public, ca_key = _get_secret(client, namespace, n.ca), _get_secret(client, namespace, n.ca_key)
    if ca_public is not None and ca_key is not None:
        if ca_key["tls.crt"] not in ca_public["ca.crt"]:
            out.append(f"{n.ca}: does not publish the CA kept in {n.ca_key}")
        for leaf_secret in (n.tls, n.token_tls):
            leaf = _get_secret(client, namespace, leaf_secret)
            if leaf is not None and not _signed_by_one_of(leaf["tls.crt"], ca_public["ca.crt"]):
                out.append(f"{leaf_secret}: not signed by a CA in {n.ca}")
    stored = _get_secret(client, namespace, n.htpasswd)
    if stored is None:
        return [*out, f"{n.htpasswd}: missing"]
    lines = dict(line.split(":", 1) for line in _lines(stored["htpasswd"].decode()))
    generated = _get_secret(client, namespace, n.passwords) or {}
    for user, password in [*((k, v.decode()) for k, v in generated.items()), *referenced.items()]:
        hashed = lines.get(user)
        if hashed is None:
            out.append(f"{n.htpasswd}: no line for {user!r}")
        elif not bcrypt.checkpw(password.encode(), hashed.replace("$2y$", "$2b$", 1).encode()):
            out.append(f"{n.htpasswd}: the line of {user!r} does not verify its password")
    return out


def referenced_users(spec: Mapping[str, Any]) -> dict[str, str]:
    """user -> password for the users of `spec` whose password is bob's referenced Secret."""
    return {u["name"]: BOB_PASSWORD for u in spec.get("auth", {}).get("users", ()) if "passwordSecretRef" in u}
