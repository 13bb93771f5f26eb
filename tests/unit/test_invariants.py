"""Where several modules must agree: every child a spec renders is observed before it is applied (so `apply`
can compare and check ownership), and everything `obsolete` deletes is observed too."""

import itertools

import pytest
from builders import OWNER

from registry_operator import material, names, render, spec
from registry_operator.observe import candidates
from registry_operator.render import garbage_collection

AUTH = {
    "htpasswd": {"users": [{"name": "alice"}, {"name": "bob", "passwordSecretRef": {"name": "pw"}}]},
    "referenced-only": {"users": [{"name": "bob", "passwordSecretRef": {"name": "pw"}}]},
    "token": {"mode": "token", "users": [{"name": "alice"}],
              "access": [{"users": ["alice"], "repositories": ["*"], "actions": ["pull"]}]},
    "none": {"mode": "none"},
    "joined": {"mode": "token", "indexRef": {"name": "idx"}},
}
TLS = {"SelfSigned": {}, "Secret": {"mode": "Secret", "secretName": "mine"}, "Disabled": {"mode": "Disabled"}}
STORAGE = {"emptyDir": {}, "claim": {"persistentVolumeClaim": {"size": "1Gi"}},
           "s3": {"s3": {"bucket": "images", "credentialsSecretRef": {"name": "keys"}}}}
PROXY = {"registry": None,
         "cache": {"remoteURL": "https://up:5000", "credentialsSecretName": "up", "caSecretName": "up-ca"}}


@pytest.mark.parametrize("auth, tls, storage, proxy", list(itertools.product(AUTH, TLS, STORAGE, PROXY)))
def test_every_rendered_child_is_observed(auth, tls, storage, proxy):
    raw = {"auth": AUTH[auth], "tls": TLS[tls], "storage": STORAGE[storage]}
    if PROXY[proxy]:
        raw["proxy"] = PROXY[proxy]
    s = spec.parse("reg", "ns", raw)
    joined = material.Joined("idx", "https://idx-token.ns.svc:5001/token", b"", b"") if s.auth.index else None
    mat = material.decide(s, {"pw": {"password": b"secret"}, "up": {"username": b"u", "password": b"p"}},
                          joined=joined)
    for pod_monitor in (False, True):
        rendered = {(o["kind"], o["metadata"]["name"])
                    for o in render.desired(s, mat, OWNER, "img", pod_monitor, joined=joined)}
        if s.storage.collectable:  # the GC Job, rendered by reconcile while a collection runs
            rendered.add(_key(garbage_collection.job(s, OWNER, "r", None, suspend=True, node=None,
                                                     operator_image="img")))
        for token_was_on in (False, True):
            observed = {(kind, name) for _, kind, name in candidates(s, token_was_on, pod_monitor)}
            assert rendered <= observed, rendered - observed
    doomed = {(kind, name) for _, kind, name in render.obsolete(s)}
    assert doomed <= {(kind, name) for _, kind, name in candidates(s, token_was_on=True, upstream_was_on=True)}


def _children(name: str, token: bool = True) -> set[tuple[str, str]]:
    """Every (kind, name) a Registry called `name` can own: token mode (or htpasswd), SelfSigned, a claim, a
    generated password, a pull-through cache's upstream Secret."""
    s = spec.parse(name, "ns", {"auth": AUTH["token" if token else "htpasswd"], "storage": STORAGE["claim"],
                                "proxy": PROXY["cache"]})
    gc_job = garbage_collection.job(s, OWNER, "r", None, suspend=True, node=None, operator_image="img")
    return {_key(o) for o in [*render.desired(s, material.decide(s, {}), OWNER, "img"), gc_job]}


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.parametrize("name", ["reg", "a" * 57])
def test_no_two_registries_render_the_same_child(name):
    """Another valid Registry whose name is ours plus the suffix of one of our children never renders one of
    our children (the CRD refuses the only such names, those ending in -token)."""
    mine = _children(name)
    for _, child in mine:
        other = child
        if other == name or names.invalid_name(other, token_mode=False) is not None:
            continue
        theirs = _children(other, token=names.invalid_name(other, token_mode=True) is None)
        assert not mine & theirs, other
