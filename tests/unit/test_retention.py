"""Retention: the pure selection (tags, rules, protected refs -> digests to delete, and why the rest stays),
the normalisation of workload image references, the spec's refusals, and its place in a collection: the
retention Job first (read-write), then the GC Job, with its robot credential and its record in status."""

import base64
import datetime as dt
import json

import pytest

from registry_operator import garbage_collection as gc
from registry_operator import inuse, material, names, pki, render, retention, spec
from registry_operator.render import network, token
from registry_operator.render import retention as retention_render
from registry_operator.render import secrets as secrets_render
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
    ({**BASE, "auth": {"mode": "token", "indexRef": {"name": "idx"}}, "retention": {"keepNewest": 1}},
     "joined to a RegistryIndex"),
])
def test_spec_refuses_bad_retention(raw, message):
    with pytest.raises(ValueError, match=message):
        spec.parse("reg", "ns", raw)


# -- a collection with retention: the retention Job first (read-write), then the GC Job ------------------------

OWNER = {"metadata": {"name": "reg", "namespace": "ns", "uid": "u-1"}}
SUMMARY = ('{"dryRun": false, "keptSharedDigest": 1, "keptSharedDigestTags": ["app:alias"], "manifests": 1, '
           '"tags": 1, "deletedTags": ["app:old"]}')


def reg_with(retention=None, auth=None):
    raw = {**BASE, "auth": auth or {"users": [{"name": "alice"}]}}
    if retention is not None:
        raw["retention"] = retention
    return spec.parse("reg", "ns", raw)


def body(requested="r1", status=None):
    return {"metadata": {"name": "reg", "namespace": "ns", "uid": "u-1",
                         "annotations": {names.GC_REQUESTED: requested} if requested else {}},
            "status": {"garbageCollection": status} if status else {}}


def rjob(request="r1", condition=None):
    status = {}
    if condition:
        status = {"completionTime": "2026-12-01T11:59:00Z",
                  "conditions": [{"type": condition, "status": "True", "lastTransitionTime": "2026-12-01T11:59:00Z"}]}
    return {"metadata": {"name": "reg-retention", "annotations": {names.GC_JOB_REQUEST: request},
                         "creationTimestamp": "2026-12-01T11:58:00Z"}, "spec": {}, "status": status}


def test_a_due_collection_with_retention_starts_with_the_retention_job_read_write():
    s = reg_with({"keepNewest": 2})
    plan = gc.plan(s, body(), None, NOW)
    assert (plan.hold_read_only, plan.job, plan.retention) == (False, None, ("r1", None))
    assert plan.status["phase"] == gc.RETENTION
    assert [e[1] for e in gc.events(None, plan.status)] == ["RetentionStarted"]
    running = gc.plan(s, body(status=plan.status), None, NOW, retention_job=rjob())
    assert (running.hold_read_only, running.job, running.retention) == (False, None, None)
    assert not running.effective(s).read_only


def test_after_retention_the_collection_goes_read_only_and_records_what_went():
    s = reg_with({"keepNewest": 2})
    before = {"phase": gc.RETENTION}
    plan = gc.plan(s, body(status=before), None, NOW, retention_job=rjob(condition="Complete"),
                   retention_message=SUMMARY)
    assert plan.hold_read_only and plan.job == ("r1", None) and plan.retention is None
    record = plan.status["lastRetention"]
    assert record["result"] == "Succeeded" and record["deletedTags"] == ["app:old"]
    said = gc.events(before, plan.status)
    assert [e[1] for e in said] == ["RetentionApplied", "GarbageCollectionStarted"]
    assert "deleted 1 manifest(s), tags app:old; kept 1 tag(s) that share a digest" in said[0][2]
    # the GC Job ends: both Jobs go, the record stays (a `last` field)
    done = {"metadata": {"name": "reg-gc", "annotations": {names.GC_JOB_REQUEST: "r1"},
                         "creationTimestamp": "2026-12-01T11:59:00Z"}, "spec": {"suspend": False},
            "status": {"completionTime": "2026-12-01T11:59:30Z", "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-01T11:59:30Z"}]}}
    end = gc.plan(s, body(status=plan.status), done, NOW, retention_job=rjob(condition="Complete"),
                  retention_message=SUMMARY)
    assert end.delete_job and end.status["lastRetention"] == record
    rest = gc.plan(s, body(status=end.status), None, NOW)
    assert rest.status["lastRetention"] == record and not rest.delete_retention and rest.retention is None
    assert gc.events(end.status, rest.status) == []


def test_a_failed_retention_is_a_warning_and_the_collection_goes_ahead():
    plan = gc.plan(reg_with({"keepNewest": 2}), body(status={"phase": gc.RETENTION}), None, NOW,
                   retention_job=rjob(condition="Failed"), retention_message="retention failed: GET /v2/: HTTP 401")
    assert plan.hold_read_only and plan.job == ("r1", None)
    kind, reason, message = gc.events({"phase": gc.RETENTION}, plan.status)[0]
    assert (kind, reason) == ("Warning", "RetentionFailed") and "HTTP 401" in message


def test_dry_run_is_said_as_one():
    record = {"result": "Succeeded", "dryRun": True, "manifests": 3, "tags": 25,
              "deletedTags": [f"app:t{i}" for i in range(retention.SHOWN)], "keptSharedDigest": 0}
    kind, reason, message = gc.retention_event(record)
    assert reason == "RetentionDryRun" and message.startswith("dry run: would delete 3 manifest(s)")
    assert message.endswith("and 5 more")


def test_a_retention_job_of_another_run_is_deleted_first():
    s = reg_with({"keepNewest": 2})
    plan = gc.plan(s, body("r2"), None, NOW, retention_job=rjob("r1", "Complete"))
    assert plan.delete_retention and plan.retention is None and not plan.hold_read_only
    idle = gc.plan(s, body(None), None, NOW, retention_job=rjob("r1", "Complete"))
    assert idle.delete_retention and idle.job is None


def test_retention_job_and_config_map():
    s = reg_with({"keepNewest": 2, "repositories": ["team/*"], "dryRun": True})
    guard = Protected(frozenset({("team/app", "v1")}), frozenset({("team/app", "sha256:ab")}))
    config = json.loads(retention_render.config_map(s, OWNER, guard)["data"]["config.json"])
    assert config == {"registry": "https://reg.ns.svc:5000",
                      "retention": {"repositories": ["team/*"], "keepNewest": 2, "keepTags": [], "dryRun": True},
                      "protected": {"tags": ["team/app:v1"], "digests": ["team/app@sha256:ab"]}}
    assert spec.parse_retention(config["retention"]) == s.retention  # what prune reads back
    job = retention_render.job(s, OWNER, "r1", None, "registry-operator:test", ca_bundle=True)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "registry_operator.prune"]
    assert "--ca" in container["args"] and pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["REGISTRY_USERNAME"]["value"] == "robot$retention"
    assert env["REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "reg-http-secret",
                                                                      "key": material.RETENTION_KEY}
    assert job["metadata"]["annotations"] == {names.GC_JOB_REQUEST: "r1"}


def test_the_retention_robot_is_generated_once_and_may_only_pull_and_delete():
    s = reg_with({"keepNewest": 2}, auth={"mode": "token", "users": [{"name": "alice"}]})
    first = material.decide(s, {})
    assert first.retention_password and "robot$retention:" in first.htpasswd
    stored = {o["metadata"]["name"]: {k: base64.b64decode(v) for k, v in o["data"].items()}
              for o in secrets_render.render(s, first, OWNER)}
    again = material.decide(s, stored)
    assert again.retention_password == first.retention_password and again.htpasswd == first.htpasswd
    rule = token.service_config(s, first)["access"][0]
    assert rule["users"] == ["robot$retention"] and rule["actions"] == ["pull", "delete"] and rule["catalog"]
    assert material.decide(reg_with(), {}).retention_password is None


def test_network_policy_with_peers_lets_the_retention_job_in():
    raw = {**BASE, "auth": {"users": [{"name": "alice"}]}, "retention": {"keepNewest": 1},
           "networkPolicy": {"from": [{"podSelector": {"matchLabels": {"app": "ci"}}}]}}
    policy = network.policies(spec.parse("reg", "ns", raw), OWNER)[0]
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[-1] == {"podSelector": {"matchLabels": names.selector("reg", names.COMPONENT_RETENTION)}}


def test_without_a_ca_bundle_the_retention_job_trusts_the_system_roots():
    """tls.mode Secret with a publicly trusted certificate (no ca.crt): no `-ca` ConfigMap is rendered, so the
    Job must not mount one (its pod would wait for it forever)."""
    raw = {**BASE, "auth": {"users": [{"name": "alice"}]}, "retention": {"keepNewest": 1},
           "tls": {"mode": "Secret", "secretName": "public-cert"}}
    s = spec.parse("reg", "ns", raw)
    public = pki.issue_server(pki.issue_ca("a public CA"), ["reg.example.com"])
    mat = material.decide(s, {"public-cert": {"tls.crt": public.cert_pem, "tls.key": public.key_pem}})
    assert mat.client_ca_pem is None and not any(o["kind"] == "ConfigMap" and o["metadata"]["name"] == "reg-ca"
                                                 for o in render.desired(s, mat, OWNER, "img"))
    pod = retention_render.job(s, OWNER, "r1", None, "img", ca_bundle=False)["spec"]["template"]["spec"]
    assert "--ca" not in pod["containers"][0]["args"]
    assert all("configMap" not in v or v["configMap"]["name"] != "reg-ca" for v in pod["volumes"])
