"""Retention: the pure selection (tags, rules, protected refs -> digests to delete, and why the rest stays),
the normalisation of workload image references, and the spec's refusals."""

import datetime as dt

import pytest

from registry_operator import inuse, retention, spec
from registry_operator.retention import Protected, Tag

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NOBODY = Protected()


def days_ago(n: float) -> dt.datetime:
    return NOW - dt.timedelta(days=n)


def rules(**raw):
    return spec.parse_retention(raw)


def test_keep_newest_deletes_the_older_digests():
    tags = [Tag("app", f"v{i}", f"sha256:{i}", days_ago(10 - i)) for i in range(5)]
    d = retention.select(tags, rules(keepNewest=2), NOBODY, NOW)
    assert d.delete == (("app", "sha256:0"), ("app", "sha256:1"), ("app", "sha256:2"))
    assert d.kept == {"app:v3": "one of the 2 newest", "app:v4": "one of the 2 newest"}


def test_a_digest_shared_with_a_kept_tag_is_kept_and_said_so():
    # `old` would go, but `stable` points at the same manifest: deleting it by digest would remove `stable` too.
    tags = [Tag("app", "old", "sha256:a", days_ago(30)), Tag("app", "stable", "sha256:a", days_ago(30)),
            Tag("app", "new", "sha256:b", days_ago(1))]
    d = retention.select(tags, rules(keepNewest=1, keepTags=["stable"]), NOBODY, NOW)
    assert d.delete == ()
    assert d.kept["app:old"].startswith("shares its digest with kept tag stable")
    assert d.summary(False)["keptSharedDigestTags"] == ["app:old"]


def test_a_digest_goes_with_all_its_tags_when_every_one_may_go():
    tags = [Tag("app", "a", "sha256:a", days_ago(30)), Tag("app", "alias", "sha256:a", days_ago(30)),
            Tag("app", "new", "sha256:b", days_ago(1))]
    d = retention.select(tags, rules(keepNewest=1), NOBODY, NOW)
    assert d.delete == (("app", "sha256:a"),)
    assert [t.name for t in d.deleted_tags] == ["a", "alias"]
    assert d.summary(False) | {"deletedTags": None} == {
        "dryRun": False, "manifests": 1, "tags": 2, "deletedTags": None, "keptSharedDigest": 0,
        "keptSharedDigestTags": []}


def test_newest_ties_are_broken_by_name_and_the_sibling_is_kept():
    # The e2e case: keep-newest 1 over two tags of one digest keeps one by rank and the other by sharing.
    tags = [Tag("app", "new", "sha256:n", days_ago(1)), Tag("app", "alias", "sha256:n", days_ago(1)),
            Tag("app", "old", "sha256:o", days_ago(9))]
    d = retention.select(tags, rules(keepNewest=1), NOBODY, NOW)
    assert d.delete == (("app", "sha256:o"),)
    assert d.kept["app:new"] == "one of the 1 newest"
    assert d.kept["app:alias"].startswith("shares its digest with kept tag new")


def test_in_use_by_tag_or_by_digest_is_never_deleted():
    tags = [Tag("app", "pinned", "sha256:p", days_ago(90)), Tag("app", "running", "sha256:r", days_ago(80)),
            Tag("app", "old", "sha256:o", days_ago(70)), Tag("app", "new", "sha256:n", days_ago(1))]
    guard = Protected(frozenset({("app", "pinned")}), frozenset({("app", "sha256:r")}))
    d = retention.select(tags, rules(keepNewest=1), guard, NOW)
    assert d.delete == (("app", "sha256:o"),)
    assert d.kept["app:pinned"] == "in use by a workload (by tag)"
    assert d.kept["app:running"] == "in use by a workload (by digest)"
    # the guard is per repository: the same tag elsewhere is not protected
    other = retention.select([Tag("other", "pinned", "sha256:p", days_ago(90)), Tag("other", "x", "sha256:x", NOW)],
                             rules(keepNewest=1), guard, NOW)
    assert other.delete == (("other", "sha256:p"),)


def test_age_rule_keep_tags_and_repository_globs():
    tags = [Tag("team/a/app", "v1", "sha256:1", days_ago(40)), Tag("team/a/app", "v2", "sha256:2", days_ago(3)),
            Tag("team/a/app", "latest", "sha256:3", days_ago(50)), Tag("base/img", "v0", "sha256:0", days_ago(99))]
    d = retention.select(tags, rules(keepYoungerThan="720h", keepTags=["latest"], repositories=["team/*"]),
                         NOBODY, NOW)
    assert d.delete == (("team/a/app", "sha256:1"),)  # base/img is not matched: never touched
    assert d.kept == {"team/a/app:latest": "matches keepTags", "team/a/app:v2": "younger than keepYoungerThan"}


def test_either_rule_keeps_a_tag():
    tags = [Tag("app", "v1", "sha256:1", days_ago(2)), Tag("app", "v2", "sha256:2", days_ago(1)),
            Tag("app", "v0", "sha256:0", days_ago(60))]
    d = retention.select(tags, rules(keepNewest=1, keepYoungerThan="72h"), NOBODY, NOW)
    assert d.delete == (("app", "sha256:0"),)


def test_an_image_without_a_creation_time_is_kept_and_takes_no_newest_slot():
    tags = [Tag("app", "index", "sha256:i", None), Tag("app", "v1", "sha256:1", days_ago(5)),
            Tag("app", "v0", "sha256:0", days_ago(6))]
    d = retention.select(tags, rules(keepNewest=1), NOBODY, NOW)
    assert d.delete == (("app", "sha256:0"),)
    assert d.kept["app:index"] == "its image has no creation time"


def test_summary_is_bounded():
    tags = [Tag("app", f"t{i:03}", f"sha256:{i:03}", days_ago(100 - i / 10)) for i in range(50)]
    s = retention.select(tags, rules(keepNewest=1), NOBODY, NOW).summary(True)
    assert (s["dryRun"], s["manifests"], s["tags"], len(s["deletedTags"])) == (True, 49, 49, retention.SHOWN)


@pytest.mark.parametrize(("ref", "parsed"), [
    ("reg.ns.svc:5000/team/app:v1", ("reg.ns.svc", "team/app", "v1", None)),
    ("127.0.0.1:31000/app@sha256:ab", ("127.0.0.1", "app", None, "sha256:ab")),
    ("REG.example.com/app:v1@sha256:ab", ("reg.example.com", "app", "v1", "sha256:ab")),
    ("docker-pullable://[fd00::1]:5000/app@sha256:ab", ("[fd00::1]", "app", None, "sha256:ab")),
    ("localhost/app", ("localhost", "app", None, None)),
    ("nginx:1.27", None),
    ("library/nginx", None),
])
def test_reference_parsing(ref, parsed):
    assert inuse.parse(ref) == parsed


def test_protected_keeps_only_this_registrys_references_on_any_port():
    endpoints = ["reg.ns.svc:5000", "reg.ns.svc.cluster.local:5000", "127.0.0.1:5000"]
    refs = ["reg.ns.svc:5000/app:v1", "127.0.0.1:31000/app@sha256:ab", "reg.ns.svc.cluster.local:5000/base",
            "other.ns.svc:5000/app:v2", "nginx:1.27", "127.0.0.1:5000/app:v3@sha256:cd"]
    got = inuse.protected(refs, endpoints)
    assert got.tags == {("app", "v1"), ("base", "latest"), ("app", "v3")}
    assert got.digests == {("app", "sha256:ab"), ("app", "sha256:cd")}


@pytest.mark.parametrize(("kind", "body"), [
    ("Pod", {"spec": {"containers": [{"image": "a"}], "initContainers": [{"image": "b"}]},
             "status": {"containerStatuses": [{"imageID": "c"}]}}),
    ("Deployment", {"spec": {"template": {"spec": {"containers": [{"image": "a"}, {"image": "b"}]}}}}),
    ("CronJob", {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"image": "a"}],
                                                                         "initContainers": [{"image": "b"}]}}}}}}),
])
def test_workload_images(kind, body):
    assert sorted(inuse.images({"kind": kind, **body})) == ["a", "b", "c"][: 3 if kind == "Pod" else 2]


BASE = {"storage": {"persistentVolumeClaim": {}, "deleteEnabled": True}, "garbageCollection": {}}


def test_spec_parses_retention():
    s = spec.parse("reg", "ns", {**BASE, "retention": {"keepNewest": 3, "keepYoungerThan": "720h",
                                                       "keepTags": ["latest"], "dryRun": True}})
    assert s.retention == spec.Retention(("*",), 3, 720 * 3600, ("latest",), True)


@pytest.mark.parametrize(("raw", "message"), [
    ({**BASE, "retention": {}}, "keepNewest or keepYoungerThan"),
    ({**BASE, "retention": {"keepNewest": 0}}, "at least 1"),
    ({**BASE, "retention": {"keepYoungerThan": "30d"}}, "not a duration"),
    ({"storage": BASE["storage"], "retention": {"keepNewest": 1}}, "needs garbageCollection"),
    ({**BASE, "storage": {"persistentVolumeClaim": {}}, "retention": {"keepNewest": 1}}, "deleteEnabled"),
])
def test_spec_refuses_bad_retention(raw, message):
    with pytest.raises(ValueError, match=message):
        spec.parse("reg", "ns", raw)
