"""The no-op rule of `apply`: skip only when the live object holds our exact, hashed intent."""

import copy

from registry_operator.apply import contains, up_to_date, with_intent_hash

DESIRED = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"},
           "data": {"a": "1"}}


def live(obj):
    out = copy.deepcopy(obj)
    out["metadata"].update(resourceVersion="7", uid="u", managedFields=[{"manager": "x"}])
    return out


def test_settled_object_is_up_to_date():
    desired = with_intent_hash(DESIRED)
    assert up_to_date(desired, live(desired))


def test_missing_edited_or_stale_objects_are_applied():
    desired = with_intent_hash(DESIRED)
    assert not up_to_date(desired, None)
    edited = live(desired)
    edited["data"]["a"] = "2"
    assert not up_to_date(desired, edited)
    stale = live(with_intent_hash({**DESIRED, "data": {"a": "1", "b": "2"}}))
    assert not up_to_date(desired, stale)  # holds every field, but an older intent with an extra one


def test_contains_compares_lists_elementwise():
    assert contains({"l": [{"a": 1, "x": 2}]}, {"l": [{"a": 1}]})
    assert not contains({"l": [{"a": 1}, {"a": 2}]}, {"l": [{"a": 1}]})
    assert not contains({"l": [{"a": 2}]}, {"l": [{"a": 1}]})


def test_merged_lists_ignore_items_other_managers_added_but_not_missing_or_edited_ones():
    ours = {"spec": {"ports": [{"name": "registry", "port": 5000}]}}
    by_hand = {"spec": {"ports": [{"name": "https", "port": 6000}, {"name": "registry", "port": 5000}]}}
    assert contains(by_hand, ours)  # an apply would leave the hand-added port: no write at rest
    assert not contains({"spec": {"ports": [{"name": "https", "port": 6000}]}}, ours)
    assert not contains({"spec": {"ports": [{"name": "registry", "port": 5001}]}}, ours)
    two = {"volumeMounts": [{"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/b"}]}
    assert not contains({"volumeMounts": [{"name": "v", "mountPath": "/a"}]}, two)  # one item per item
    # Atomic lists are compared whole: an extra argument or a port opened in a NetworkPolicy rule is an edit to
    # take back.
    assert not contains({"args": ["serve", "--debug"]}, {"args": ["serve"]})
    assert not contains({"ports": [{"port": 22}, {"port": 5000}]}, {"ports": [{"port": 5000}]})
