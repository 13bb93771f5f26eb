"""Conditions: computed from observations, stable transition times, events only on change."""

import datetime as dt

from registry_operator import conditions, spec
from registry_operator.material import Problem

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
SPEC = spec.parse("reg", "ns", {"auth": {"users": [{"name": "a"}]}})


def deployment(ready: int, generation: int = 2, observed: int = 2, replicas: int = 1):
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "readyReplicas": ready, "availableReplicas": ready,
                       "updatedReplicas": replicas}}


def by_type(status):
    return {c["type"]: c for c in status["conditions"]}


def test_ready_when_the_rollout_is_complete():
    status = conditions.compute(SPEC, 3, [], {"reg": deployment(1)}, {"endpoint": "reg.ns.svc:5000"}, None, T0)
    c = by_type(status)
    assert (c["Ready"]["status"], c["Progressing"]["status"], c["Degraded"]["status"]) == ("True", "False", "False")
    assert all(x["observedGeneration"] == 3 for x in status["conditions"])
    assert status["observedGeneration"] == 3 and status["readyReplicas"] == 1
    assert status["endpoint"] == "reg.ns.svc:5000"


def test_progressing_while_pods_are_not_ready_or_the_spec_is_unseen():
    for d in (deployment(0), deployment(1, generation=3, observed=2), None):
        c = by_type(conditions.compute(SPEC, 1, [], {"reg": d}, {}, None, T0))
        assert c["Ready"]["status"] == "False" and c["Progressing"]["status"] == "True"


def test_problems_make_it_degraded_and_not_ready():
    problem = Problem("PasswordSecretNotFound", "user 'b': Secret 'x' does not exist")
    c = by_type(conditions.compute(SPEC, 1, [problem], {"reg": deployment(1)}, {}, None, T0))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "PasswordSecretNotFound"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "PasswordSecretNotFound"


def test_unsupported_replicas_are_reported():
    s = spec.parse("reg", "ns", {"replicas": 3, "storage": {"persistentVolumeClaim": {}}})
    c = by_type(conditions.compute(s, 1, [], {"reg": deployment(1)}, {}, None, T0))
    assert c["Degraded"]["reason"] == "ReplicasUnsupported" and "ReadWriteMany" in c["Degraded"]["message"]


def test_transition_time_is_kept_while_the_status_stays():
    first = conditions.compute(SPEC, 1, [], {"reg": deployment(0)}, {}, None, T0)
    again = conditions.compute(SPEC, 1, [], {"reg": deployment(0)}, {}, first, T1)
    assert again == first  # nothing changed: identical status, so nothing is written
    ready = conditions.compute(SPEC, 1, [], {"reg": deployment(1)}, {}, first, T1)
    before, after = by_type(first), by_type(ready)
    assert after["Ready"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert after["Degraded"]["lastTransitionTime"] == before["Degraded"]["lastTransitionTime"]


def test_events_only_on_transitions():
    first = conditions.compute(SPEC, 1, [], {"reg": deployment(0)}, {}, None, T0)
    ready = conditions.compute(SPEC, 1, [], {"reg": deployment(1)}, {}, first, T1)
    assert conditions.transitions(first, ready) == [("Normal", "Ready", ready["conditions"][0]["message"])]
    assert conditions.transitions(ready, ready) == []
    broken = conditions.compute(SPEC, 1, [Problem("TLSSecretNotFound", "m")], {"reg": deployment(1)}, {}, ready, T1)
    assert ("Warning", "TLSSecretNotFound", "m") in conditions.transitions(ready, broken)


def test_rules_naming_unknown_users_or_groups_are_reported():
    s = spec.parse("reg", "ns", {"auth": {"mode": "token", "users": [{"name": "a"}],
                                          "groups": [{"name": "g", "users": ["a", "ghost"]}],
                                          "access": [{"groups": ["nope"], "repositories": ["*"],
                                                      "actions": ["pull"]}]}})
    c = by_type(conditions.compute(s, 1, [], {"reg": deployment(1)}, {}, None, T0))
    assert c["Degraded"]["reason"] == "AccessRuleInvalid"
    assert "'ghost'" in c["Degraded"]["message"] and "'nope'" in c["Degraded"]["message"]
