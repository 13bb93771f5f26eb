"""Garbage collection on a real control plane: read-only first, the Job on the registry's node, then back.

kwok completes a Job's pods (its `pod-complete` stage), so a requested collection runs to its end here. A
ResourceQuota of one pod keeps the Job's pod from being created, which holds a collection mid-way: the
operator is killed there, and a new one must finish (or roll back) what the old one started.
"""

from __future__ import annotations

import datetime as dt
import re
import time

import yaml
from lightkube import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod
from lightkube.types import PatchType
from registries import get, is_ready, manifest, owned, registry

from registry_operator import names
from registry_operator.names import GC_COLLECTED, GC_REQUESTED

SPEC = {"auth": {"mode": "none"}, "storage": {"persistentVolumeClaim": {"size": "1Gi"}}}


def read_only(client, namespace: str) -> bool:
    config = yaml.safe_load(get(client, "ConfigMap", "reg-config", namespace)["data"]["config.yml"])
    return config["storage"]["maintenance"]["readonly"]["enabled"]


def gc_status(client, namespace: str) -> dict:
    return (registry(client, "reg", namespace).get("status") or {}).get("garbageCollection") or {}


def job(client, namespace: str) -> dict | None:
    try:
        return client.get(Job, "reg-gc", namespace=namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def request(cluster, namespace: str, value: str) -> None:
    cluster.kubectl("annotate", "registry", "reg", "-n", namespace, f"{GC_REQUESTED}={value}", "--overwrite")


def reasons(client, namespace: str) -> list[str]:
    return [e.reason for e in client.list(Event, namespace=namespace)
            if e.involvedObject.kind == "Registry" and (e.reason or "").startswith("GarbageCollection")]


def test_requested_collection_runs_read_only_on_the_registry_node_then_restarts_read_write(
        cluster, kube_client, namespace, operator_with_rbac, wait_for):
    cluster.apply(manifest("reg", namespace, SPEC))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    assert not read_only(kube_client, namespace) and "garbageCollection" not in registry(kube_client, "reg", namespace)[
        "status"]
    template_before = get(kube_client, "Deployment", "reg", namespace)["spec"]["template"]["metadata"]["annotations"]

    started = time.monotonic()
    request(cluster, namespace, "1")
    wait_for(lambda: job(kube_client, namespace), timeout=30, what="the GC Job")
    assert read_only(kube_client, namespace)  # rendered before the Job can run
    running = wait_for(lambda: (j := job(kube_client, namespace)) and not j["spec"]["suspend"] and j, timeout=60,
                       what="the GC Job resumed")
    # Resumed only once the read-only template is rolled out everywhere, and on the registry pod's node.
    deployment = get(kube_client, "Deployment", "reg", namespace)
    assert deployment["status"]["updatedReplicas"] == deployment["status"]["replicas"] == 1
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
    registry_nodes = {p.spec.nodeName for p in kube_client.list(Pod, namespace=namespace,
                                                                labels={"app.kubernetes.io/component": "registry"})}
    terms = running["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {v for t in terms for f in t["matchFields"] for v in f["values"]} == registry_nodes
    steps = {c["name"]: c for c in running["spec"]["template"]["spec"]["initContainers"]}
    assert steps["garbage-collect"]["args"] == ["garbage-collect", "/etc/distribution/config.yml"]
    assert running["metadata"]["ownerReferences"][0]["controller"] is True

    done = wait_for(lambda: (s := gc_status(kube_client, namespace)).get("lastResult") and s, timeout=60,
                    what="the collection's result")
    wait_for(lambda: job(kube_client, namespace) is None, timeout=30, what="the GC Job deleted")
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")
    print(f"request -> result recorded: {time.monotonic() - started:.2f}s")
    assert done["lastResult"] == "Succeeded" and done["lastRequest"] == "1" and done["phase"] == "Idle"
    assert dt.datetime.fromisoformat(done["lastEndTime"]) >= dt.datetime.fromisoformat(done["lastStartTime"])
    assert not read_only(kube_client, namespace)
    template = get(kube_client, "Deployment", "reg", namespace)["spec"]["template"]["metadata"]["annotations"]
    assert template[GC_COLLECTED] == done["lastEndTime"] and template != template_before  # the pods restarted
    assert reasons(kube_client, namespace).count("GarbageCollectionStarted") == 1
    assert reasons(kube_client, namespace).count("GarbageCollectionSucceeded") == 1

    # At rest: the answered request is not run again and nothing is written.
    time.sleep(2)
    before = owned(kube_client, namespace, "reg")
    cluster.kubectl("annotate", "registry", "reg", "-n", namespace, "unrelated=1")  # an event, no request
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert owned(kube_client, namespace, "reg") == before and job(kube_client, namespace) is None
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv  # no status write
    assert gc_status(kube_client, namespace) == done


def _held(cluster, kube_client, namespace, operator_factory, wait_for):
    """A Registry whose requested collection is resumed but cannot start its pod (quota); the operator that
    started it is killed there. Returns the held Job."""
    cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: one-pod, namespace: {namespace}}}\n"
                  "spec: {hard: {pods: '1'}}\n")
    first = operator_factory()
    cluster.apply(manifest("reg", namespace, SPEC))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    request(cluster, namespace, "kill-me")
    held = wait_for(lambda: (j := job(kube_client, namespace)) and not j["spec"]["suspend"] and j, timeout=60,
                    what="the GC Job resumed")
    wait_for(lambda: gc_status(kube_client, namespace).get("phase") == "Collecting", what="phase Collecting")
    first.process.kill()  # no clean shutdown
    first.process.wait()
    assert read_only(kube_client, namespace)
    return held


def test_operator_killed_mid_collection_resumes_and_records_the_success(
        cluster, kube_client, namespace, operator_factory, wait_for):
    _held(cluster, kube_client, namespace, operator_factory, wait_for)
    cluster.kubectl("delete", "resourcequota", "one-pod", "-n", namespace)  # kwok now runs the Job's pod
    wait_for(lambda: any(c["type"] == "Complete" for c in (job(kube_client, namespace) or {}).get(
        "status", {}).get("conditions") or ()), timeout=60, what="the Job complete while no operator runs")
    assert read_only(kube_client, namespace)

    operator_factory()
    wait_for(lambda: gc_status(kube_client, namespace).get("lastResult"), timeout=60, what="the result")
    wait_for(lambda: job(kube_client, namespace) is None, timeout=30, what="the GC Job deleted")
    assert gc_status(kube_client, namespace)["lastResult"] == "Succeeded"
    assert gc_status(kube_client, namespace)["lastRequest"] == "kill-me" and not read_only(kube_client, namespace)
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")


def test_failed_collection_after_a_restart_returns_to_read_write_with_a_warning(
        cluster, kube_client, namespace, operator_factory, wait_for):
    held = _held(cluster, kube_client, namespace, operator_factory, wait_for)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = [{"type": t, "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than "
               "specified deadline", "lastTransitionTime": now, "lastProbeTime": now}
              for t in ("FailureTarget", "Failed")]
    kube_client.patch(Job.Status, "reg-gc", {"status": {"conditions": failed}},
                      namespace=namespace, patch_type=PatchType.MERGE)
    assert held["metadata"]["uid"] == job(kube_client, namespace)["metadata"]["uid"]

    operator_factory()
    wait_for(lambda: gc_status(kube_client, namespace).get("lastResult"), timeout=60, what="the result")
    wait_for(lambda: job(kube_client, namespace) is None, timeout=30, what="the GC Job deleted")
    status = gc_status(kube_client, namespace)
    assert status["lastResult"] == "Failed" and "DeadlineExceeded" in status["lastMessage"]
    assert not read_only(kube_client, namespace)
    wait_for(lambda: "GarbageCollectionFailed" in reasons(kube_client, namespace), what="a Warning Event")
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")


def test_schedule_tick_runs_a_collection_without_any_event(cluster, kube_client, namespace, operator, wait_for):
    cluster.apply(manifest("reg", namespace, {**SPEC, "garbageCollection": {"schedule": "* * * * *"}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    first_tick = wait_for(lambda: gc_status(kube_client, namespace).get("nextScheduleTime"), what="the next tick")
    assert "lastResult" not in gc_status(kube_client, namespace)  # nothing runs before the first tick
    # Only the operator's own timer can start this: nothing in the API changes at the tick.
    done = wait_for(lambda: (s := gc_status(kube_client, namespace)).get("lastScheduleTime") == first_tick and s,
                    timeout=100, what="the scheduled collection recorded")
    assert done["lastResult"] == "Succeeded" and "lastRequest" not in done
    assert done["nextScheduleTime"] > first_tick
    assert not read_only(kube_client, namespace)


def test_usage_measured_by_a_collection_reaches_status_and_then_rests(
        cluster, kube_client, namespace, operator_with_rbac, wait_for):
    """The Job's `usage` container ends with a JSON summary (its termination message): the operator records
    what was freed and what the storage holds, shows it in `get -o wide`, and writes nothing more at rest.
    kwok's completed pods carry no message, so a quota keeps the Job's pod from being created and a stand-in
    pod with the Job pod's labels carries the kubelet's report, as the real pod's status would."""
    cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: two-pods, namespace: {namespace}}}\n"
                  "spec: {hard: {pods: '2'}}\n")  # the registry pod and the stand-in: none left for the Job
    cluster.apply(manifest("reg", namespace, SPEC))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    message = '{"blobs":5,"bytes":123456,"repositories":2,"blobsFreed":3,"bytesFreed":3145728}'
    ended = lambda name, msg: {"name": name, "image": "img", "imageID": "", "ready": False,  # noqa: E731
                               "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                           **({"message": msg} if msg else {})}}}
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    kube_client.create(Pod.from_dict({
        "metadata": {"name": "reg-gc-standin", "namespace": namespace,
                     "labels": names.labels("reg", names.COMPONENT_GC)},
        "spec": {"schedulerName": "nobody", "restartPolicy": "Never",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "initContainers": [{"name": n, "image": "img", "securityContext": restricted}
                                    for n in ("usage-before", "garbage-collect")],
                 "containers": [{"name": "usage", "image": "img", "securityContext": restricted}]}}))
    # Its phase stays Pending: a quota counts no pod that has ended, and the Job's pod would then be created.
    kube_client.patch(Pod.Status, "reg-gc-standin", {"status": {
        "initContainerStatuses": [ended("usage-before", None), ended("garbage-collect", None)],
        "containerStatuses": [ended("usage", message)]}}, namespace=namespace, patch_type=PatchType.MERGE)

    request(cluster, namespace, "measure")
    wait_for(lambda: (j := job(kube_client, namespace)) and not j["spec"]["suspend"], timeout=60,
             what="the GC Job resumed")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    complete = [{"type": t, "status": "True", "reason": "CompletionsReached", "message": "set by the test",
                 "lastTransitionTime": now, "lastProbeTime": now} for t in ("SuccessCriteriaMet", "Complete")]
    kube_client.patch(Job.Status, "reg-gc", {"status": {"conditions": complete, "succeeded": 1,
                                                        "completionTime": now}},
                      namespace=namespace, patch_type=PatchType.MERGE)
    done = wait_for(lambda: (s := gc_status(kube_client, namespace)).get("lastResult") and s, timeout=60,
                    what="the collection's result")
    wait_for(lambda: job(kube_client, namespace) is None, timeout=30, what="the GC Job deleted")
    assert done["lastBlobsFreed"] == 3 and done["lastBytesFreed"] == 3145728
    assert done["lastMessage"] == "garbage-collect finished; freed 3 blobs, 3.0Mi"
    usage = registry(kube_client, "reg", namespace)["status"]["usage"]
    assert usage == {"bytes": 123456, "used": "120.6Ki", "blobs": 5, "repositories": 2,
                     "measuredTime": done["lastEndTime"]}
    wide = cluster.kubectl("get", "registries", "-n", namespace, "-o", "wide").stdout.splitlines()
    print("\n".join(wide))
    starts = [(m.group(), m.start()) for m in re.finditer(r"\S+", wide[0])]  # kubectl aligns on the header
    row = {name: wide[1][at:(starts[i + 1][1] if i + 1 < len(starts) else None)].strip()
           for i, (name, at) in enumerate(starts)}
    assert (row["USED"], row["REPOS"]) == ("120.6Ki", "2"), wide
    assert "USED" not in cluster.kubectl("get", "registries", "-n", namespace).stdout  # priority 1: -o wide only
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")

    # At rest: the stand-in pod is gone, the measurement stays, and nothing is written.
    kube_client.delete(Pod, "reg-gc-standin", namespace=namespace)
    time.sleep(2)
    before = owned(kube_client, namespace, "reg")
    cluster.kubectl("annotate", "registry", "reg", "-n", namespace, "unrelated=1")  # an event, no request
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert owned(kube_client, namespace, "reg") == before
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv  # no status write
    assert registry(kube_client, "reg", namespace)["status"]["usage"] == usage


RESYNC = {"REGISTRY_OPERATOR_RESYNC_SECONDS": "2"}  # a full reconcile every 2 s, with nothing changed


def _resyncs_write_nothing(kube_client, namespace) -> None:
    """Several resyncs at rest: the Registry is not written."""
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(7)
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv  # no status write


def test_a_removed_schedule_leaves_status_and_then_rests(cluster, kube_client, namespace, operator_factory,
                                                         wait_for):
    """status.garbageCollection is written with a merge patch: a nested key no longer published
    (nextScheduleTime) must be removed, or every reconcile would find status changed and write it again."""
    operator_factory(env=RESYNC)
    cluster.apply(manifest("reg", namespace, {**SPEC, "garbageCollection": {"schedule": "0 3 * * 0"}}))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    request(cluster, namespace, "1")  # a recorded run: status.garbageCollection stays once the schedule goes
    wait_for(lambda: gc_status(kube_client, namespace).get("lastResult"), timeout=60, what="the collection's result")
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")
    assert "nextScheduleTime" in gc_status(kube_client, namespace)
    cluster.apply(manifest("reg", namespace, {**SPEC, "garbageCollection": {"deleteUntagged": False}}))
    wait_for(lambda: "nextScheduleTime" not in gc_status(kube_client, namespace), timeout=30,
             what="nextScheduleTime gone with the schedule")
    time.sleep(2)
    _resyncs_write_nothing(kube_client, namespace)


def test_a_gc_job_deleted_by_hand_ends_the_run_read_write_and_is_not_started_again(
        cluster, kube_client, namespace, operator_factory, wait_for):
    operator_factory(env=RESYNC)
    cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: one-pod, namespace: {namespace}}}\n"
                  "spec: {hard: {pods: '1'}}\n")  # holds the Job mid-way: its pod cannot be created
    cluster.apply(manifest("reg", namespace, SPEC))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    request(cluster, namespace, "abort-me")
    wait_for(lambda: (j := job(kube_client, namespace)) and not j["spec"]["suspend"], timeout=60,
             what="the GC Job resumed")
    wait_for(lambda: gc_status(kube_client, namespace).get("phase") == "Collecting", what="phase Collecting")
    kube_client.delete(Job, "reg-gc", namespace=namespace)

    done = wait_for(lambda: (s := gc_status(kube_client, namespace)).get("lastResult") and s, timeout=60,
                    what="the run recorded")
    assert done["lastResult"] == "Failed" and done["lastRequest"] == "abort-me" and done["phase"] == "Idle"
    assert "disappeared" in done["lastMessage"]
    wait_for(lambda: not read_only(kube_client, namespace), timeout=30, what="read-write again")
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready again")
    assert job(kube_client, namespace) is None
    assert reasons(kube_client, namespace).count("GarbageCollectionFailed") == 1
    time.sleep(2)
    _resyncs_write_nothing(kube_client, namespace)
    assert job(kube_client, namespace) is None and gc_status(kube_client, namespace) == done
