"""Garbage collection decided from what exists: the Job (or its absence), the request annotation, last status."""

import dataclasses
import datetime as dt

import pytest

from registry_operator import garbage_collection as gc
from registry_operator import material, names, render, spec
from registry_operator.apply import with_intent_hash
from registry_operator.render import garbage_collection as gc_render

NOW = dt.datetime(2026, 12, 1, 10, 0, 30, tzinfo=dt.UTC)
CLAIM = {"persistentVolumeClaim": {"size": "1Gi"}}
OWNER = {"metadata": {"name": "reg", "namespace": "ns", "uid": "u-1"}}


def reg(gc_spec=None, version="3", storage=CLAIM, read_only=False):
    raw = {"version": version, "storage": storage, "readOnly": read_only,
           "auth": {"users": [{"name": "alice"}]}}
    if gc_spec is not None:
        raw["garbageCollection"] = gc_spec
    return spec.parse("reg", "ns", raw)


def body(requested=None, status=None):
    annotations = {names.GC_REQUESTED: requested} if requested else {}
    return {"metadata": {"name": "reg", "namespace": "ns", "uid": "u-1", "annotations": annotations},
            "status": {"garbageCollection": status} if status else {}}


def job(suspend=False, created=NOW - dt.timedelta(minutes=1), request="r1", scheduled=None, condition=None):
    annotations = {names.GC_JOB_REQUEST: request} if request else {}
    if scheduled:
        annotations[names.GC_JOB_SCHEDULED] = scheduled
    status = {}
    if condition:
        status = {"startTime": "2026-12-01T09:59:40Z",
                  "conditions": [{"type": condition[0], "status": "True", "reason": condition[1],
                                  "message": condition[2], "lastTransitionTime": "2026-12-01T10:00:10Z"}]}
        if condition[0] == "Complete":
            status["completionTime"] = "2026-12-01T10:00:05Z"
    return {"metadata": {"name": "reg-gc", "annotations": annotations, "creationTimestamp": gc.stamp(created)},
            "spec": {"suspend": suspend}, "status": status}


def test_at_rest_without_gc_says_nothing_and_holds_nothing():
    plan = gc.plan(reg(), body(), None, NOW)
    assert plan == gc.Plan(False, None, False, None, None)
    assert plan.effective(reg()) == reg()  # the registry renders exactly as before the feature


def test_new_request_creates_suspended_job_and_holds_read_only():
    plan = gc.plan(reg(), body("r1"), None, NOW)
    assert plan.hold_read_only and plan.job == ("r1", None) and not plan.delete_job
    assert plan.status == {"phase": gc.READ_ONLY}
    assert plan.effective(reg()).read_only
    assert gc.events(None, plan.status)[0][1] == "GarbageCollectionStarted"


def test_request_already_answered_is_not_run_again():
    plan = gc.plan(reg(), body("r1", {"phase": "Idle", "lastRequest": "r1", "lastResult": "Succeeded"}), None, NOW)
    assert not plan.hold_read_only and plan.job is None
    assert gc.pending_request({names.GC_REQUESTED: "r1"}, {"garbageCollection": {"lastRequest": "r1"}}) is False
    assert gc.pending_request({names.GC_REQUESTED: "r2"}, {"garbageCollection": {"lastRequest": "r1"}}) is True


def test_request_on_emptydir_is_refused_once_without_touching_the_registry():
    empty = reg(storage={})
    plan = gc.plan(empty, body("r1"), None, NOW)
    assert not plan.hold_read_only and plan.job is None
    assert plan.status["lastResult"] == "Failed" and plan.status["lastRequest"] == "r1"
    assert "lastEndTime" not in plan.status  # no restart annotation: an emptyDir restart loses every image
    assert plan.effective(empty) == empty
    # Recorded: the next reconcile has nothing to do.
    again = gc.plan(empty, body("r1", plan.status), None, NOW)
    assert again.status == plan.status and gc.events(plan.status, again.status) == []


def test_suspended_job_keeps_read_only_and_wakes_at_the_timeout():
    plan = gc.plan(reg(), body("r1"), job(suspend=True), NOW)
    assert plan.hold_read_only and plan.job == ("r1", None) and plan.status["phase"] == gc.READ_ONLY
    assert plan.wake_after == pytest.approx((gc.READ_ONLY_TIMEOUT - dt.timedelta(minutes=1)).total_seconds())


def test_running_job_is_left_alone():
    plan = gc.plan(reg(), body("r1"), job(), NOW)
    assert plan.hold_read_only and plan.job is None and plan.status["phase"] == gc.COLLECTING


def test_completed_job_is_recorded_released_and_deleted():
    plan = gc.plan(reg(), body("r1"), job(condition=("Complete", "", "")), NOW)
    assert not plan.hold_read_only and plan.delete_job
    assert plan.status == {"phase": "Idle", "lastRequest": "r1", "lastResult": "Succeeded",
                           "lastMessage": "garbage-collect finished", "lastStartTime": "2026-12-01T09:59:30Z",
                           "lastEndTime": "2026-12-01T10:00:05Z"}
    effective = plan.effective(reg())
    assert not effective.read_only and effective.pod_annotations[names.GC_COLLECTED] == "2026-12-01T10:00:05Z"
    assert [e[1] for e in gc.events({"phase": gc.COLLECTING}, plan.status)] == ["GarbageCollectionSucceeded"]
    # After the Job is gone: the same status, the same pod template, nothing runs again.
    after = gc.plan(reg(), body("r1", plan.status), None, NOW)
    assert after.status == plan.status and after.job is None and after.effective(reg()) == effective


def test_failed_job_releases_read_only_with_a_warning():
    plan = gc.plan(reg(), body("r1"), job(condition=("Failed", "DeadlineExceeded", "too long")), NOW)
    assert not plan.hold_read_only and plan.delete_job
    assert plan.status["lastResult"] == "Failed" and "DeadlineExceeded: too long" in plan.status["lastMessage"]
    assert gc.events({"phase": gc.COLLECTING}, plan.status)[0][:2] == ("Warning", "GarbageCollectionFailed")


def test_a_failed_run_with_redis_says_the_cache_may_be_stale():
    redis = dataclasses.replace(reg(), redis=spec.Redis("10.0.0.9:6379", 2))
    plan = gc.plan(redis, body("r1"), job(condition=("Failed", "BackoffLimitExceeded", "pod failed")), NOW)
    assert "Redis cache (10.0.0.9:6379 db 2) may still describe deleted blobs" in plan.status["lastMessage"]
    timed_out = gc.plan(redis, body("r1"), job(suspend=True, created=NOW - gc.READ_ONLY_TIMEOUT), NOW)
    assert "Redis" not in timed_out.status["lastMessage"]  # it never ran: nothing collected, nothing stale


def test_failed_job_says_what_garbage_collect_said_last():
    failed = job(condition=("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    assert gc.failed(failed) and not gc.failed(job()) and not gc.failed(job(condition=("Complete", "", "")))
    plan = gc.plan(reg(), body("r1"), failed, NOW, "failed to garbage collect: failed to mark: disk full")
    assert plan.status["lastResult"] == "Failed"
    assert plan.status["lastMessage"].endswith("backoff limit): failed to garbage collect: failed to mark: disk full")


def test_nothing_pushed_yet_is_nothing_to_collect_not_a_failure():
    """Seen on the real node: `kubectl annotate ... gc-requested` on examples/garbage-collection.yaml before any
    push. distribution's garbage-collect exits 1 on a storage without repositories."""
    said = "failed to garbage collect: failed to mark: filesystem: Path not found: /docker/registry/v2/repositories"
    failed = job(condition=("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    plan = gc.plan(reg(), body("r1"), failed, NOW, said)
    assert not plan.hold_read_only and plan.delete_job
    assert plan.status["lastResult"] == "Succeeded" and "no repository" in plan.status["lastMessage"]
    assert [e[:2] for e in gc.events({"phase": gc.COLLECTING}, plan.status)] == [
        ("Normal", "GarbageCollectionSucceeded")]


def test_read_only_switch_that_takes_too_long_is_abandoned_read_write():
    created = NOW - gc.READ_ONLY_TIMEOUT - dt.timedelta(seconds=1)
    plan = gc.plan(reg(), body("r1"), job(suspend=True, created=created), NOW)
    assert not plan.hold_read_only and plan.delete_job and plan.status["lastResult"] == "Failed"
    # The end is derived from the Job, not from now: a retried reconcile computes the same status.
    later = gc.plan(reg(), body("r1"), job(suspend=True, created=created), NOW + dt.timedelta(minutes=5))
    assert later.status == plan.status


def test_schedule_publishes_next_tick_and_wakes_then():
    plan = gc.plan(reg({"schedule": "0 3 * * *"}), body(), None, NOW)
    assert plan.status == {"phase": "Idle", "nextScheduleTime": "2026-12-02T03:00:00Z"} and plan.job is None
    assert plan.wake_after == pytest.approx((dt.datetime(2026, 12, 2, 3, tzinfo=dt.UTC) - NOW).total_seconds())
    # Published: stays put as time passes, so a settled Registry writes nothing.
    later = gc.plan(reg({"schedule": "0 3 * * *"}), body(status=plan.status), None, NOW + dt.timedelta(hours=1))
    assert later.status == plan.status


def test_due_tick_starts_and_the_job_carries_it():
    status = {"phase": "Idle", "nextScheduleTime": "2026-12-01T10:00:00Z"}
    plan = gc.plan(reg({"schedule": "0 * * * *"}), body(status=status), None, NOW)
    assert plan.job == (None, "2026-12-01T10:00:00Z") and plan.hold_read_only
    # Whatever the operator lost, the Job says which tick it serves: the next one is after it.
    running = gc.plan(reg({"schedule": "0 * * * *"}), body(status=status),
                      job(request=None, scheduled="2026-12-01T10:00:00Z"), NOW)
    assert running.status["nextScheduleTime"] == "2026-12-01T11:00:00Z"


def test_changed_schedule_starts_afresh_from_now():
    status = {"phase": "Idle", "nextScheduleTime": "2026-12-02T03:00:00Z"}
    plan = gc.plan(reg({"schedule": "30 * * * *"}), body(status=status), None, NOW)
    assert plan.status["nextScheduleTime"] == "2026-12-01T10:30:00Z" and plan.job is None


MATERIAL = material.decide(spec.parse("reg", "ns", {"storage": CLAIM, "auth": {"users": [{"name": "alice"}]}}), {})


def _deployment(read_only):
    s = reg(read_only=read_only)
    objects = render.desired(s, MATERIAL, OWNER, "op:test")
    return next(o for o in objects if o["kind"] == "Deployment")


def test_serves_needs_the_read_only_template_fully_rolled_out():
    desired = _deployment(read_only=True)
    live = {**with_intent_hash(desired), "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                                                    "availableReplicas": 1, "readyReplicas": 1}}
    live["metadata"] = {**live["metadata"], "generation": 2}
    assert gc.serves(desired, live)
    assert not gc.serves(desired, {**live, "status": {**live["status"], "observedGeneration": 1}})
    assert not gc.serves(desired, {**live, "status": {**live["status"], "replicas": 2}})  # an old pod remains
    assert not gc.serves(_deployment(read_only=False), live)  # the live one is the read-only template
    assert not gc.serves(desired, None)


def test_job_runs_garbage_collect_on_the_same_storage_image_and_config():
    s = reg({"deleteUntagged": True, "dryRun": True})
    job_ = gc_render.job(s, OWNER, "r1", None, suspend=True, node=None, operator_image="img")
    pod = job_["spec"]["template"]["spec"]
    [before, container], [usage] = pod["initContainers"], pod["containers"]
    assert container["args"] == ["garbage-collect", "--delete-untagged", "--dry-run", "/etc/distribution/config.yml"]
    assert container["image"] == s.image and job_["spec"]["suspend"] is True
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"  # its last line reaches status
    assert {v["name"]: v for v in pod["volumes"]}["data"] == {"name": "data",
                                                               "persistentVolumeClaim": {"claimName": "reg-data"}}
    assert {v["name"] for v in pod["volumes"]} == {"config", "data", "tmp"}  # no TLS key, no passwords
    assert job_["metadata"]["ownerReferences"][0]["controller"] is True
    assert job_["metadata"]["annotations"] == {names.GC_JOB_REQUEST: "r1"}
    pinned = gc_render.job(s, OWNER, "r1", None, suspend=False, node="node-7",
                           operator_image="img")["spec"]["template"]["spec"]
    terms = pinned["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-7"]}]}]
    assert gc_render.args(reg(version="2.8"))[-1] == "/etc/docker/registry/config.yml"
    # The storage is measured before and after, with the collector's own view of it (config, claim, keys).
    for step in (before, usage):
        assert step["image"] == "img" and step["command"] == ["python", "-m", "registry_operator.storageusage"]
        assert step["volumeMounts"] == container["volumeMounts"] and step.get("env") == container.get("env")
    assert before["args"] == ["--config", "/etc/distribution/config.yml", "--save", gc_render.USAGE_BEFORE]
    assert usage["args"][-4:] == ["--before", gc_render.USAGE_BEFORE, "--termination-log", gc_render.USAGE_SUMMARY]
    assert usage["terminationMessagePath"] == gc_render.USAGE_SUMMARY and usage["name"] == gc_render.USAGE_CONTAINER


@pytest.mark.parametrize(("raw", "message"), [
    ({"deleteUntagged": True}, "version 3"),
    ({"schedule": "0 3 * *"}, "5 fields"),
])
def test_spec_refuses(raw, message):
    with pytest.raises(ValueError, match=message):
        reg(raw, version="2.8")


def test_spec_refuses_gc_on_emptydir():
    with pytest.raises(ValueError, match="persistentVolumeClaim"):
        reg({"schedule": "0 3 * * *"}, storage={})


def test_a_measured_run_records_what_it_freed_and_the_usage_after():
    text = '{"blobs":3,"bytes":4096,"repositories":1,"blobsFreed":2,"bytesFreed":3145728}'
    measured = gc.report(text)
    assert measured == {"blobs": 3, "bytes": 4096, "repositories": 1, "blobsFreed": 2, "bytesFreed": 3145728}
    plan = gc.plan(reg(), body("r1"), job(condition=("Complete", "", "")), NOW, measured=measured)
    assert plan.status["lastBlobsFreed"] == 2 and plan.status["lastBytesFreed"] == 3145728
    assert plan.status["lastMessage"] == "garbage-collect finished; freed 2 blobs, 3.0Mi"
    used = gc.usage(None, measured, plan.status["lastEndTime"])
    assert used == {"bytes": 4096, "used": "4.0Ki", "blobs": 3, "repositories": 1,
                    "measuredTime": "2026-12-01T10:00:05Z"}
    # At rest (no Job): the same usage, the same status: nothing to write.
    assert gc.usage(used, None, None) == used
    assert gc.plan(reg(), body("r1", plan.status), None, NOW).status == plan.status
    # The next run that could not measure says so, and claims nothing freed; the old usage stays, dated.
    unmeasured = gc.report('{"error":"no static S3 keys to list the bucket with (workload identity)"}')
    again = gc.plan(reg(), body("r2", plan.status), job(request="r2", condition=("Complete", "", "")), NOW,
                    measured=unmeasured)
    assert "lastBytesFreed" not in again.status and "lastBlobsFreed" not in again.status
    assert again.status["lastMessage"].endswith("storage not measured: no static S3 keys to list the bucket with "
                                                "(workload identity)")
    assert gc.usage(used, unmeasured, again.status["lastEndTime"]) == used


@pytest.mark.parametrize("text", [None, "", "garbage-collect: done", "[1]", '{"blobs":1}', '{"blobs":true,'
                                  '"bytes":1,"repositories":1}'])
def test_a_message_that_is_no_usage_report_is_ignored(text):
    assert gc.report(text) is None


@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5Ki"),
                                            (5 * 1024**3 + 1, "5.0Gi"), (2 * 1024**6, "2048.0Pi")])
def test_human_sizes_use_binary_units(size, text):
    assert gc.human(size) == text


@pytest.mark.parametrize("phase", [gc.READ_ONLY, gc.COLLECTING])
def test_a_job_deleted_by_hand_ends_the_run_read_write_and_is_not_started_again(phase):
    previous = {"phase": phase, "lastRequest": "r0", "lastResult": "Succeeded", "lastStartTime": "2026-11-01T00:00:00Z",
                "lastBlobsFreed": 3, "lastBytesFreed": 300}
    plan = gc.plan(reg(), body("r1", previous), None, NOW)
    assert not plan.hold_read_only and plan.job is None and not plan.delete_job
    assert plan.status["phase"] == gc.IDLE and plan.status["lastRequest"] == "r1"
    assert plan.status["lastResult"] == "Failed" and "disappeared" in plan.status["lastMessage"]
    assert {"lastStartTime", "lastBlobsFreed", "lastBytesFreed"}.isdisjoint(plan.status)  # not this run's
    effective = plan.effective(reg())  # read-write, and the pods restart
    assert not effective.read_only and effective.pod_annotations[names.GC_COLLECTED] == gc.stamp(NOW)
    assert gc.events(previous, plan.status)[0][:2] == ("Warning", "GarbageCollectionFailed")
    again = gc.plan(reg(), body("r1", plan.status), None, NOW)  # recorded: nothing starts again
    assert again.status == plan.status and again.job is None and not again.hold_read_only


def test_a_scheduled_run_whose_job_was_deleted_waits_for_the_next_tick():
    previous = {"phase": gc.COLLECTING, "nextScheduleTime": "2026-12-01T10:00:00Z"}
    plan = gc.plan(reg({"schedule": "0 * * * *"}), body(None, previous), None, NOW)
    assert plan.job is None and not plan.hold_read_only and plan.status["lastResult"] == "Failed"
    assert (plan.status["lastScheduleTime"], plan.status["nextScheduleTime"]) == (
        "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z")
    assert plan.wake_after == pytest.approx(3570)
    again = gc.plan(reg({"schedule": "0 * * * *"}), body(None, plan.status), None, NOW)
    assert again.job is None and again.status == plan.status


def test_a_job_deleted_after_retention_also_drops_the_retention_job():
    retained = job(request="r1", condition=("Complete", "", ""))
    plan = gc.plan(reg(), body("r1", {"phase": gc.COLLECTING}), None, NOW, retention_job=retained)
    assert plan.job is None and plan.retention is None and plan.delete_retention
