"""Status from a Registry's Deployments alone (`progress`): the same status a full reconcile computes while only
their progress changed, and a refusal (None) whenever anything a full reconcile decides on may have changed."""

from __future__ import annotations

import copy
import datetime as dt
import functools

from registry_operator import conditions, material, progress, verified
from registry_operator.apply import with_intent_hash
from registry_operator.render import desired as render_desired
from registry_operator.spec import parse

UID = "uid-1"
STAMP = "stamp"
NOW = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
BODY = {"metadata": {"name": "reg", "namespace": "ns", "uid": UID, "generation": 3, "annotations": {"a": "b"}}}
SPEC = parse("reg", "ns", {"auth": {"users": [{"name": "alice"}]}})
PUBLISHED = {"endpoint": "reg.ns.svc:5000"}


def _stored(desired: list[dict]) -> dict:
    """What the API server holds after our apply: resourceVersions, a Deployment generation, no status yet."""
    live = {}
    for version, obj in enumerate(desired, start=100):
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(version)
        if obj["kind"] == "Deployment":
            stored["metadata"]["generation"] = 1
        live[(obj["kind"], obj["metadata"]["name"])] = stored
    return live


def _kept() -> tuple[progress.Progress, dict]:
    mat = material.decide(SPEC, {})
    desired = [with_intent_hash(o) for o in render_desired(SPEC, mat, BODY, "registry-operator:0.1.0")]
    live = _stored(desired)
    status_of = functools.partial(conditions.compute, SPEC, 3, [], published=PUBLISHED)
    kept = progress.keep(BODY, live, desired, ["reg"],
                         lambda w, previous, at: status_of(workloads=w, previous=previous, now=at))
    assert kept is not None
    return kept, live


def _progressed(deployment: dict, version: str, available: int, edit=None) -> dict:
    """The Deployment after the controller reported progress (and, with `edit`, someone changed it)."""
    out = copy.deepcopy(deployment)
    out["metadata"]["resourceVersion"] = version
    out["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "1"  # the controller's
    out["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": available,
                     "availableReplicas": available}
    if edit:
        edit(out)
    return out


def _ready(status: dict) -> str:
    return next(c["status"] for c in status["conditions"] if c["type"] == "Ready")


def test_progress_alone_gives_the_status_and_fingerprint_of_a_full_reconcile():
    kept, live = _kept()
    deployment = _progressed(live[("Deployment", "reg")], "200", available=1)
    before = {"observedGeneration": 3, "conditions": [], verified.STATUS_FIELD: "old"}
    status = progress.status(kept, {**BODY, "status": before}, {"reg": deployment}, STAMP, NOW)
    assert status is not None and _ready(status) == "True" and status["readyReplicas"] == 1
    now_live = {**live, ("Deployment", "reg"): deployment}
    assert status[verified.STATUS_FIELD] == verified.fingerprint(STAMP, UID, 3, verified.combine(now_live, UID))


def test_a_fingerprint_that_alone_would_change_is_not_worth_a_write():
    kept, live = _kept()
    first = _progressed(live[("Deployment", "reg")], "200", available=1)
    status = progress.status(kept, {**BODY, "status": {}}, {"reg": first}, STAMP, NOW)
    assert status is not None
    again = _progressed(first, "201", available=1)  # another update of the controller's that changes nothing
    later = progress.status(kept, {**BODY, "status": status}, {"reg": again}, STAMP, NOW + dt.timedelta(seconds=5))
    assert later == status


def _remove_hash(obj: dict) -> None:
    obj["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}


def _scaled(obj: dict) -> None:
    obj["spec"]["replicas"] = 3
    obj["metadata"]["generation"] = 2


def _relabelled(obj: dict) -> None:
    obj["metadata"]["labels"] = {**obj["metadata"]["labels"], "app.kubernetes.io/instance": "other"}


def test_anything_a_full_reconcile_decides_on_is_left_to_it():
    kept, live = _kept()
    deployment = live[("Deployment", "reg")]
    for edit in (_remove_hash, _scaled, _relabelled):
        assert progress.status(kept, BODY, {"reg": _progressed(deployment, "300", 1, edit)}, STAMP, NOW) is None
    assert progress.status(kept, BODY, {"reg": None}, STAMP, NOW) is None  # deleted
    newer = {"metadata": {**BODY["metadata"], "generation": 4}}
    assert progress.status(kept, newer, {"reg": _progressed(deployment, "300", 1)}, STAMP, NOW) is None
    annotated = {"metadata": {**BODY["metadata"], "annotations": {"registry.operator.dev/gc-requested": "now"}}}
    assert progress.status(kept, annotated, {"reg": _progressed(deployment, "300", 1)}, STAMP, NOW) is None


def test_nothing_is_kept_for_a_workload_that_was_not_stored():
    mat = material.decide(SPEC, {})
    desired = [with_intent_hash(o) for o in render_desired(SPEC, mat, BODY, "registry-operator:0.1.0")]
    live = {k: v for k, v in _stored(desired).items() if k[0] != "Deployment"}
    assert progress.keep(BODY, live, desired, ["reg"], lambda *_: {}) is None


def test_nothing_is_kept_once_every_rollout_is_complete():
    kept, live = _kept()
    done = _progressed(live[("Deployment", "reg")], "200", available=1)
    assert progress.settled({"reg": done})
    assert not progress.settled({"reg": live[("Deployment", "reg")]})
    mat = material.decide(SPEC, {})
    desired = [with_intent_hash(o) for o in render_desired(SPEC, mat, BODY, "registry-operator:0.1.0")]
    assert progress.keep(BODY, {**live, ("Deployment", "reg"): done}, desired, ["reg"], lambda *_: {}) is None


def test_only_deployment_events_are_light():
    assert progress.light(["Deployment"]) and progress.light(["Deployment", "Deployment"])
    assert not progress.light(["Deployment", "Secret"]) and not progress.light(["ConfigMap"])
