"""Lines of a watch as `watches` reads them: metadata only, bookmarks too, and ERROR events as failures."""

import json

import pytest

from registry_operator import watches


def line(type_: str, obj: dict) -> str:
    return json.dumps({"type": type_, "object": obj})


def test_a_bookmark_carries_only_a_version() -> None:
    # A Deployment bookmark has no spec.selector, which lightkube's typed Deployment requires.
    type_, meta = watches.parse_event(line("BOOKMARK", {"kind": "Deployment", "apiVersion": "apps/v1",
                                                        "metadata": {"resourceVersion": "42"}}))
    assert (type_, meta.resourceVersion, meta.name) == ("BOOKMARK", "42", None)


def test_an_event_gives_the_metadata_its_function_reads() -> None:
    obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {
        "name": "reg", "namespace": "ns", "resourceVersion": "7", "labels": {"app.kubernetes.io/instance": "reg"},
        "ownerReferences": [{"apiVersion": "registry.operator.dev/v1alpha1", "kind": "RegistryIndex", "name": "idx",
                             "uid": "u", "controller": True}]}}
    type_, meta = watches.parse_event(line("MODIFIED", obj))
    assert type_ == "MODIFIED" and meta.labels == {"app.kubernetes.io/instance": "reg"}
    assert meta.ownerReferences[0].controller and meta.ownerReferences[0].kind == "RegistryIndex"


def test_a_version_too_old_means_list_again_and_other_errors_fail() -> None:
    with pytest.raises(watches._Gone):
        watches.parse_event(line("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"}))
    with pytest.raises(RuntimeError, match="InternalError: boom"):
        watches.parse_event(line("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError",
                                           "message": "boom"}))


def test_an_empty_metadata_listing_has_null_items() -> None:
    page = watches.msgspec.json.decode(b'{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1",'
                                       b'"metadata":{"resourceVersion":"9"},"items":null}', type=watches._Page)
    assert page.items is None and page.metadata.resourceVersion == "9" and not page.metadata.continue_
