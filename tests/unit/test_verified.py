"""The fingerprint a restart compares (`verified`): the listing's fold and a reconcile's agree, and only then."""

from __future__ import annotations

import asyncio
import dataclasses

from lightkube.models.meta_v1 import ObjectMeta, OwnerReference

from registry_operator import names, verified
from registry_operator.config import Config
from registry_operator.spec import parse

UID = "uid-1"
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_INSTANCE: "reg"}
SECRET_LABELS = {**OURS, names.LABEL_WATCH: "true"}


def _owner(uid: str = UID, controller: bool = True) -> dict:
    return {"apiVersion": "registry.operator.dev/v1alpha1", "kind": "Registry", "name": "reg", "uid": uid,
            "controller": controller}


def _obj(name: str, version: str, labels: dict | None = None, owner: dict | None = None) -> dict:
    return {"metadata": {"name": name, "resourceVersion": version, "labels": OURS if labels is None else labels,
                         "ownerReferences": [owner or _owner()]}}


def _meta(obj: dict) -> ObjectMeta:
    meta = obj["metadata"]
    return ObjectMeta(name=meta["name"], resourceVersion=meta["resourceVersion"], labels=meta["labels"],
                      ownerReferences=[OwnerReference(**ref) for ref in meta["ownerReferences"]])


CHILDREN = {
    ("Deployment", "reg"): _obj("reg", "11"),
    ("Service", "reg"): _obj("reg", "12"),
    ("ConfigMap", "reg-config"): _obj("reg-config", "13"),
    ("Secret", "reg-tls"): _obj("reg-tls", "14", SECRET_LABELS),
    ("NetworkPolicy", "reg"): None,  # a candidate that does not exist
}


def _listing(children: dict, order: list | None = None) -> verified.Listing:
    listing = verified.Listing()
    listing.expect(1)
    for kind, name in order or list(children):
        if children[(kind, name)] is not None:
            listing.listed(kind, _meta(children[(kind, name)]))
    listing.finished()
    return listing


def _take(listing: verified.Listing, uid: str = UID) -> int | None:
    return asyncio.run(listing.take(uid))


def test_the_listing_folds_to_what_a_reconcile_computes_in_any_order():
    expected = verified.combine(CHILDREN, UID)
    assert _take(_listing(CHILDREN)) == expected
    assert _take(_listing(CHILDREN, order=list(reversed(CHILDREN)))) == expected


def test_any_other_version_or_a_missing_child_differs():
    base = verified.combine(CHILDREN, UID)
    assert verified.combine({**CHILDREN, ("Service", "reg"): _obj("reg", "99")}, UID) != base
    assert verified.combine({**CHILDREN, ("Service", "reg"): None}, UID) != base


def test_what_the_watches_do_not_list_counts_on_neither_side():
    unlisted = {
        **CHILDREN,
        ("Secret", "unlabelled"): _obj("unlabelled", "20", OURS),  # no watch label: not listed
        ("ConfigMap", "theirs"): _obj("theirs", "21", {}),  # not labelled as ours
        ("Service", "other"): _obj("other", "22", owner=_owner("uid-2")),  # another controller
        ("PodMonitor", "reg"): _obj("reg", "23"),  # not watched at all
    }
    assert verified.combine(unlisted, UID) == verified.combine(CHILDREN, UID)
    assert _take(_listing(unlisted)) == verified.combine(CHILDREN, UID)


def test_a_change_after_the_listing_spoils_the_owner_and_each_fold_is_taken_once():
    listing = verified.Listing()
    listing.expect(2)
    listing.listed("Deployment", _meta(CHILDREN[("Deployment", "reg")]))
    listing.changed(_meta(CHILDREN[("Deployment", "reg")]))  # an event: the fold no longer describes it
    listing.listed("Service", _meta(CHILDREN[("Service", "reg")]))  # another kind's listing, still going
    listing.finished()
    listing.finished()
    assert _take(listing) is None

    listing = _listing(CHILDREN)
    assert _take(listing) is not None
    assert _take(listing) is None  # the resync after a restart reads everything


def test_take_waits_for_every_listing_at_start():
    async def main() -> int | None:
        listing = verified.Listing()
        listing.expect(2)
        waiting = asyncio.create_task(listing.take(UID))
        listing.listed("Deployment", _meta(CHILDREN[("Deployment", "reg")]))
        listing.finished()
        await asyncio.sleep(0.01)
        assert not waiting.done()
        listing.listed("Service", _meta(CHILDREN[("Service", "reg")]))
        listing.finished()
        return await waiting

    both = {k: v for k, v in CHILDREN.items() if k in {("Deployment", "reg"), ("Service", "reg")}}
    assert asyncio.run(main()) == verified.combine(both, UID)


def test_the_stamp_follows_the_settings_that_shape_children_only():
    config = Config()
    assert verified.stamp(config) == verified.stamp(dataclasses.replace(config, identity="other-pod", metrics_port=1))
    assert verified.stamp(config) != verified.stamp(dataclasses.replace(config, operator_image="op:2"))
    assert verified.stamp(config) != verified.stamp(dataclasses.replace(config, cluster_domain="corp.local"))


def test_only_registries_whose_state_is_all_in_their_children_are_eligible():
    def eligible(spec: dict, pod_monitors: bool = False) -> bool:
        return verified.eligible(parse("reg", "ns", spec), None, None, pod_monitors)

    assert eligible({"auth": {"users": [{"name": "alice"}]}})
    assert eligible({"version": "2.8", "storage": {"persistentVolumeClaim": {"size": "1Gi"}}})
    assert not eligible({}, pod_monitors=True)
    assert not eligible({"auth": {"users": [{"name": "bob", "passwordSecretRef": {"name": "bob-pw"}}]}})
    assert not eligible({"pullSecrets": {"namespaces": ["apps"]}})
    assert not eligible({"nodeTrust": {"enabled": True}})
    assert not eligible({"storage": {"deleteEnabled": True, "persistentVolumeClaim": {"size": "1Gi"}},
                         "garbageCollection": {"schedule": "0 3 * * 0"}})


def test_the_fingerprint_binds_build_registry_and_generation():
    one = verified.fingerprint("stamp", UID, 1, 7)
    assert one == verified.fingerprint("stamp", UID, 1, 7)
    assert len({one, verified.fingerprint("other", UID, 1, 7), verified.fingerprint("stamp", "uid-2", 1, 7),
                verified.fingerprint("stamp", UID, 2, 7), verified.fingerprint("stamp", UID, 1, 8)}) == 5
