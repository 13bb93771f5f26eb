"""Garbage collection, decided from what exists: (spec, request annotation, last status, GC Job, now) -> plan.

`registry garbage-collect` corrupts a registry that accepts pushes, and the registry's blob-descriptor cache
serves deleted blobs until the process restarts. So one collection is: render the registry read-only, wait
until every pod serves that config, run the Job, render read-write again (a config change, so the pods
restart with an empty cache). The GC Job is the only record of a collection under way: created suspended when
one is due, so while it exists the registry is held read-only, and once it has finished (or the read-only
switch took too long) its result goes into status before it is deleted. An operator killed at any point finds
the same Job and takes the same decisions; a Job deleted by hand ends the hold, read-write. Nothing is kept in
memory, and a Registry with no collection due decides the same thing on every resync, writing nothing.

With `spec.retention` a collection starts one step earlier, read-write: the retention Job deletes manifests
through the registry's API (which read-only refuses), and only once it has ended (either way: a failed
retention must not cost the collection) is the GC Job created and the registry switched to read-only; the
collection then frees the blobs of what retention deleted. The retention Job carries the run it serves, like
the GC Job; it stays until the collection ends (its record: a finished one means "retention done for this
run"), and its outcome is `lastRetention` in status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import apply, cron, names
from .conditions import Rollout
from .spec import RegistrySpec

Obj = dict[str, Any]

# The switch to read-only is one rollout; past this the collection is given up and the registry goes back
# to read-write (a stuck rollout must never leave it refusing pushes).
READ_ONLY_TIMEOUT = dt.timedelta(minutes=15)

IDLE, READ_ONLY, COLLECTING = "Idle", "SwitchingToReadOnly", "Collecting"
RETENTION = "ApplyingRetention"
LINE_LIMIT = 300  # of a failed retention's last line, in status and its Event
SUCCEEDED, FAILED = "Succeeded", "Failed"
# The Events of a collection's end (`events`): only these count a run; retention's Events come before it.
ENDED = ("GarbageCollectionSucceeded", "GarbageCollectionFailed")
# What `registry garbage-collect` (3.1.2 and 2.8) says, and fails with, on a storage nothing was pushed to yet.
NO_REPOSITORIES = "Path not found: /docker/registry/v2/repositories"


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Outcome:
    """How a finished (or abandoned) collection ended."""

    result: str  # Succeeded | Failed
    message: str
    start: str | None
    end: str | None


def failed(job: Mapping[str, Any]) -> bool:
    """Whether the GC Job has failed (then its container's last line is worth a read: `finished`)."""
    return any(c.get("type") == "Failed" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or ())


def ended(job: Mapping[str, Any]) -> bool:
    """Whether the GC Job has run to an end (then its pod's `usage` container left a `report`)."""
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or ())


def finished(job: Mapping[str, Any], now: dt.datetime, last_line: str | None = None) -> Outcome | None:
    """The outcome of the GC Job, or None while it is still waiting or running. `last_line`: what a failed
    Job's container said last. A storage without any repository (nothing pushed yet) makes distribution's
    garbage-collect fail; there is nothing to collect there, so that is a success, not a Warning."""
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    for c in status.get("conditions") or ():
        if c.get("status") != "True" or c.get("type") not in ("Complete", "Failed"):
            continue
        end = status.get("completionTime") or c.get("lastTransitionTime")
        start = meta.get("creationTimestamp")  # when pushes started to be refused, not when the pod started
        if c["type"] == "Complete":
            return Outcome(SUCCEEDED, "garbage-collect finished", start, end)
        if last_line and NO_REPOSITORIES in last_line:
            return Outcome(SUCCEEDED, "nothing to collect: the storage holds no repository yet", start, end)
        why = ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
        said = f": {last_line}" if last_line else ""
        return Outcome(FAILED, f"garbage-collect failed ({why or 'no reason given'}){said}", start, end)
    created = meta.get("creationTimestamp")
    if spec.get("suspend") and created and now - _time(created) >= READ_ONLY_TIMEOUT:
        minutes = int(READ_ONLY_TIMEOUT.total_seconds() // 60)
        return Outcome(FAILED, f"the registry did not serve read-only within {minutes} minutes; nothing was "
                               "collected", created, stamp(_time(created) + READ_ONLY_TIMEOUT))
    return None


@dataclass(frozen=True)
class Plan:
    """What this reconcile does about garbage collection."""

    hold_read_only: bool  # render the registry read-only
    job: tuple[str | None, str | None] | None  # (request, schedule tick) of the Job to create or resume, if any
    delete_job: bool  # the Job's result is in `status`: delete it once status is written
    status: Obj | None  # status.garbageCollection (None: nothing to say)
    wake_after: float | None  # seconds until something is due without any event (a schedule tick, a timeout)
    retention: tuple[str | None, str | None] | None = None  # (request, schedule tick) of a retention Job to create
    delete_retention: bool = False  # the retention Job (and its ConfigMap) serve no run under way: delete them

    def effective(self, spec: RegistrySpec) -> RegistrySpec:
        """The spec the registry is rendered from: read-only while held, and (after a collection) a pod
        template that changes with the end of the last one, so its pods restart even if its config did not."""
        annotations = dict(spec.pod_annotations)
        ended = (self.status or {}).get("lastEndTime")
        if ended:
            annotations[names.GC_COLLECTED] = ended
        return dataclasses.replace(spec, read_only=spec.read_only or self.hold_read_only, pod_annotations=annotations)


def pending_request(annotations: Mapping[str, str] | None, status: Mapping[str, Any] | None) -> bool:
    """Whether the gc-requested annotation asks for a collection that has not been recorded yet."""
    requested = (annotations or {}).get(names.GC_REQUESTED)
    last = ((status or {}).get("garbageCollection") or {}).get("lastRequest")
    return bool(requested) and requested != last


def _next_tick(schedule: cron.Cron | None, previous: Mapping[str, Any], job: Mapping[str, Any] | None,
               now: dt.datetime) -> dt.datetime | None:
    """When the schedule is next due: after the tick the running Job serves, else as last published (while it
    still is a tick of the schedule: a changed schedule starts afresh from now), else the first after now."""
    if schedule is None:
        return None
    served = ((job or {}).get("metadata", {}).get("annotations") or {}).get(names.GC_JOB_SCHEDULED)
    if served:
        return schedule.next_after(_time(served))
    published = previous.get("nextScheduleTime")
    if published and schedule.matches(_time(published)):
        return _time(published)
    return schedule.next_after(now)


def human(size: int) -> str:
    """Bytes as kubectl readers want them: 1023B, 1.5Ki, 12.3Mi, 1.0Gi (binary units, as quantities are)."""
    value, unit = float(size), "B"
    for unit in ("B", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024 or unit == "Pi":
            break
        value /= 1024
    return f"{size}B" if unit == "B" else f"{value:.1f}{unit}"


def report(text: str | None) -> dict[str, Any] | None:
    """The storage-usage summary the Job's `usage` container left as its termination message
    (registry_operator.storageusage), or None when there is none or it is not one."""
    try:
        found = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    numbers = ("blobs", "bytes", "repositories", "blobsFreed", "bytesFreed")
    out = {k: found[k] for k in numbers if isinstance(found.get(k), int) and not isinstance(found[k], bool)}
    if isinstance(found.get("error"), str):
        out["error"] = found["error"][:300]
    return out if all(k in out for k in numbers[:3]) or "error" in out else None


def usage(previous: Mapping[str, Any] | None, measured: Mapping[str, Any] | None, when: str | None
          ) -> dict[str, Any] | None:
    """status.usage: what the last collection measured (at `when`, its end), else what status already says.
    Only a finished collection changes it, so a settled Registry never rewrites it."""
    if measured and "error" not in measured and when:
        return {"bytes": measured["bytes"], "used": human(measured["bytes"]), "blobs": measured["blobs"],
                "repositories": measured["repositories"], "measuredTime": when}
    return dict(previous) if previous else None


def retention_outcome(job: Mapping[str, Any], message: str | None, now: dt.datetime) -> Obj | None:
    """status.garbageCollection.lastRetention from a finished retention Job and what its container said last
    (`message`: prune's JSON summary, or a failure's last line); None while it runs."""
    outcome = finished(job, now)
    if outcome is None:
        return None
    record: Obj = {"result": outcome.result, **({"endTime": outcome.end} if outcome.end else {})}
    last = (message or "").strip().splitlines()[-1:] or [""]
    if outcome.result == SUCCEEDED:
        try:
            summary = json.loads(last[0])
        except ValueError:
            summary = None
        if isinstance(summary, dict):
            return {**record, **summary}
        return {**record, "message": "retention finished without a summary"}
    said = last[0][:LINE_LIMIT] or outcome.message
    return {**record, "message": f"retention failed: {said}; nothing more was deleted, the collection went ahead"}


def _serves(job: Mapping[str, Any], run: tuple[str | None, str | None]) -> bool:
    annotations = job["metadata"].get("annotations") or {}
    return (annotations.get(names.GC_JOB_REQUEST), annotations.get(names.GC_JOB_SCHEDULED)) == run


def plan(spec: RegistrySpec, body: Mapping[str, Any], job: Mapping[str, Any] | None, now: dt.datetime,
         last_line: str | None = None, measured: Mapping[str, Any] | None = None,
         retention_job: Mapping[str, Any] | None = None, retention_message: str | None = None) -> Plan:
    """Decide from the Registry (`body`: its annotations and last status) and the live GC Job (None: none);
    `last_line`: what a failed Job's container said last (`finished`); `measured`: its usage `report`;
    `retention_job`: the live retention Job, and `retention_message` what its container said last, once it has
    finished."""
    gc = spec.garbage_collection
    previous: Mapping[str, Any] = (body.get("status") or {}).get("garbageCollection") or {}
    schedule = cron.Cron.parse(gc.schedule) if gc.schedule else None
    tick = _next_tick(schedule, previous, job, now)
    requested = (body["metadata"].get("annotations") or {}).get(names.GC_REQUESTED)
    last = {k: v for k, v in previous.items() if k.startswith("last")}
    status: Obj = {"phase": IDLE, **last, **({"nextScheduleTime": stamp(tick)} if tick else {})}
    wake = (tick - now).total_seconds() if tick else None
    retained = retention_outcome(retention_job, retention_message, now) if retention_job is not None else None
    if retained is not None:
        status["lastRetention"] = retained

    if job is not None:
        annotations = job["metadata"].get("annotations") or {}
        request, scheduled = annotations.get(names.GC_JOB_REQUEST), annotations.get(names.GC_JOB_SCHEDULED)
        outcome = finished(job, now, last_line)
        if outcome is None:
            suspended = bool((job.get("spec") or {}).get("suspend"))
            status["phase"] = READ_ONLY if suspended else COLLECTING
            created = job["metadata"].get("creationTimestamp")
            timeout = (_time(created) + READ_ONLY_TIMEOUT - now).total_seconds() if suspended and created else None
            return Plan(True, (request, scheduled) if suspended else None, False, status, timeout)
        message = outcome.message
        ran = not (job.get("spec") or {}).get("suspend")
        if outcome.result == FAILED and ran and spec.redis is not None and not gc.dry_run:
            # Either container may have failed: after garbage-collect, an unflushed cache serves deleted blobs.
            message += (f"; the Redis cache ({spec.redis.address} db {spec.redis.db}) may still describe deleted "
                        "blobs: request another collection (it flushes again) or FLUSHDB it by hand")
        for key in ("lastBlobsFreed", "lastBytesFreed"):  # a run that measured nothing says nothing freed
            status.pop(key, None)
        if measured and "blobsFreed" in measured and "bytesFreed" in measured:
            status.update(lastBlobsFreed=measured["blobsFreed"], lastBytesFreed=measured["bytesFreed"])
            message += f"; freed {measured['blobsFreed']} blobs, {human(measured['bytesFreed'])}"
        elif measured and "error" in measured:
            message += f"; storage not measured: {measured['error']}"
        status.update(lastResult=outcome.result, lastMessage=message)
        for key, value in (("lastStartTime", outcome.start), ("lastEndTime", outcome.end),
                           ("lastRequest", request), ("lastScheduleTime", scheduled)):
            if value:
                status[key] = value
        return Plan(False, None, True, status, wake)

    due_request = bool(requested) and requested != previous.get("lastRequest")
    due_tick = tick is not None and tick <= now
    run = (requested if due_request else None, stamp(tick) if due_tick and tick else None)
    if previous.get("phase") in (READ_ONLY, COLLECTING) and (due_request or due_tick):
        # Status says a collection holds the registry, but its Job is gone: the operator deletes it only after
        # recording its result, so someone deleted it (or it was never stored). End that run read-write, with
        # a restart (a partial collection leaves the blob cache stale), instead of starting it all over.
        for key in ("lastStartTime", "lastBlobsFreed", "lastBytesFreed"):
            status.pop(key, None)
        status.update(lastResult=FAILED, lastEndTime=stamp(now),
                      lastMessage="the GC Job disappeared before the collection ended (deleted by hand, or never "
                                  "stored); it was not started again")
        if due_request:
            status["lastRequest"] = requested
        if due_tick and tick and schedule:
            status["lastScheduleTime"] = stamp(tick)
            tick = schedule.next_after(now)
            status["nextScheduleTime"], wake = stamp(tick), (tick - now).total_seconds()
        return Plan(False, None, False, status, wake, delete_retention=retention_job is not None)
    stale = retention_job is not None and not ((due_request or due_tick) and _serves(retention_job, run))
    if not (due_request or due_tick):
        return Plan(False, None, False, status if len(status) > 1 else None, wake, delete_retention=stale)
    if not spec.storage.collectable:  # only a request can get here: the schema refuses a schedule on emptyDir
        status.update(lastRequest=requested, lastResult=FAILED,
                      lastMessage="garbage collection needs storage.persistentVolumeClaim or storage.s3: a Job "
                                  "cannot see the registry's emptyDir")
        return Plan(False, None, False, status, wake)
    if spec.retention is not None and (stale or retention_job is None or retained is None):
        # First the retention Job, read-write; a stale one (of another run) goes first, then a new one comes.
        status["phase"] = RETENTION
        create = run if retention_job is None else None
        return Plan(False, None, False, status, wake, retention=create, delete_retention=stale)
    status["phase"] = READ_ONLY
    return Plan(True, run, False, status, READ_ONLY_TIMEOUT.total_seconds())


def serves(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether every registry pod runs the `desired` Deployment (rendered read-only): the live one holds that
    intent, its controller has seen it and every replica is updated and available, with no old pod left."""
    if live is None or not apply.up_to_date(apply.with_intent_hash(dict(desired)), live):
        return False
    rollout = Rollout.of(live)
    replicas = (live.get("status") or {}).get("replicas", 0)
    return rollout is not None and rollout.complete and replicas == rollout.updated


def events(previous: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """(type, reason, message) for a collection that started or ended between two statuses."""
    before, after = previous or {}, current or {}
    out = []
    if after.get("phase") == RETENTION and before.get("phase", IDLE) == IDLE:
        out.append(("Normal", "RetentionStarted", "applying retention before garbage collection (the registry "
                                                  "stays read-write until it has ended)"))
    if after.get("lastRetention") and after.get("lastRetention") != before.get("lastRetention"):
        out.append(retention_event(after["lastRetention"]))
    if after.get("phase") == READ_ONLY and before.get("phase", IDLE) in (IDLE, RETENTION):
        out.append(("Normal", "GarbageCollectionStarted",
                    "switching the registry to read-only (pushes are refused) to collect garbage"))
    ended = (after.get("lastEndTime"), after.get("lastResult"), after.get("lastRequest"))
    if ended != (before.get("lastEndTime"), before.get("lastResult"), before.get("lastRequest")) and ended[1]:
        if after["lastResult"] == SUCCEEDED:
            out.append(("Normal", "GarbageCollectionSucceeded", f"{after['lastMessage']}; the registry is "
                                                                "read-write again and its pods restart"))
        else:
            out.append(("Warning", "GarbageCollectionFailed", f"{after['lastMessage']}; the registry is read-write"))
    return out


def retention_event(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """The Event of one retention run's record (`retention_outcome`): what went (or would go), bounded."""
    if record.get("result") != SUCCEEDED:
        return ("Warning", "RetentionFailed", str(record.get("message")))
    if "manifests" not in record:
        return ("Normal", "RetentionApplied", str(record.get("message")))
    shown = list(record.get("deletedTags") or ())
    more = record.get("tags", 0) - len(shown)
    tags = ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "nothing"
    shared = record.get("keptSharedDigest", 0)
    kept = f"; kept {shared} tag(s) that share a digest with a kept tag" if shared else ""
    if record.get("dryRun"):
        return ("Normal", "RetentionDryRun", f"dry run: would delete {record['manifests']} manifest(s), tags "
                                             f"{tags}{kept}")
    return ("Normal", "RetentionApplied", f"deleted {record['manifests']} manifest(s), tags {tags}{kept}; the "
                                          "collection frees their blobs")
