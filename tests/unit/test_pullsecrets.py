"""Pull Secrets in other namespaces: the pure decisions (hosts, config, selection, ServiceAccount patches,
the robot credential in material and in token rules, the condition)."""

import base64
import datetime as dt
import json

from builders import OWNER, Pipeline, decode_secrets

from registry_operator import conditions, htpasswd, material, pullsecrets, render, robot, spec
from registry_operator.config import Config, load
from registry_operator.render import token
from registry_operator.robot import Credential

ROBOT_USER = robot.USERS[0]

PULL = {"pullSecrets": {"namespaces": ["apps"]}}
USERS = {"auth": {"users": [{"name": "alice"}]}}


def ns(name: str, phase: str = "Active", **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase}}


def test_endpoints_are_the_service_names_and_the_extra_names_on_both_ports():
    s = spec.parse("reg", "builds", {
        "service": {"type": "NodePort", "port": 5000, "nodePort": 30050},
        "tls": {"dnsNames": ["registry.example"], "ipAddresses": ["10.0.0.1", "fd00::1"]},
    })
    assert pullsecrets.endpoints(s, "corp.local") == [
        "reg.builds.svc:5000", "reg.builds.svc.corp.local:5000",
        "registry.example:5000", "registry.example:30050", "10.0.0.1:5000", "10.0.0.1:30050",
        "[fd00::1]:5000", "[fd00::1]:30050",
    ]
    plain = spec.parse("reg", "builds", {})
    assert pullsecrets.endpoints(plain, "cluster.local") == ["reg.builds.svc:5000",
                                                             "reg.builds.svc.cluster.local:5000"]


def test_docker_config_carries_the_robot_for_every_host():
    config = json.loads(pullsecrets.docker_config(["a:1", "b:2"], Credential(ROBOT_USER, "pw")))
    assert set(config["auths"]) == {"a:1", "b:2"}
    assert base64.b64decode(config["auths"]["a:1"]["auth"]).decode() == f"{ROBOT_USER}:pw"
    assert json.loads(pullsecrets.docker_config(["a:1"], None)) == {"auths": {"a:1": {}}}


def test_label_selectors_match_as_kubernetes_does():
    labels = {"team": "a", "env": "prod"}
    assert pullsecrets.matches({}, labels)
    assert pullsecrets.matches({"matchLabels": {"team": "a"}}, labels)
    assert not pullsecrets.matches({"matchLabels": {"team": "b"}}, labels)
    assert pullsecrets.matches({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}, labels)
    assert not pullsecrets.matches({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
                                   labels)
    assert pullsecrets.matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not pullsecrets.matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)


def test_wanted_namespaces_by_name_and_label_skipping_terminating_ones_and_saying_what_is_missing():
    ps = spec.PullSecrets(namespaces=("named", "absent"), selector={"matchLabels": {"pull": "yes"}})
    live = [ns("named"), ns("labelled", pull="yes"), ns("other"), ns("going", "Terminating", pull="yes")]
    targets, problems = pullsecrets.wanted(ps, live)
    assert targets == ["labelled", "named"]
    assert [p.reason for p in problems] == ["NamespaceNotFound"] and "absent" in problems[0].message
    assert [p.reason for p in pullsecrets.wanted(spec.PullSecrets(selector={"matchLabels": {"x": "y"}}), live)[1]] \
        == ["NoNamespaceSelected"]


def test_the_operator_setting_limits_where_pull_secrets_may_go():
    allowed = Config(pull_secret_namespaces=("team-*",)).pull_secrets_allowed
    ps = spec.PullSecrets(namespaces=("kube-system",), selector={})
    targets, problems = pullsecrets.wanted(ps, [ns("kube-system"), ns("team-a"), ns("default")], allowed)
    assert targets == ["team-a"]
    assert [p.reason for p in problems] == ["NamespaceNotAllowed"]
    assert "default, kube-system" in problems[0].message
    assert Config().pull_secrets_allowed("kube-system")
    assert load({"REGISTRY_OPERATOR_PULL_SECRET_NAMESPACES": "a-*, b"}).pull_secret_namespaces == ("a-*", "b")


def test_service_account_patches_append_or_remove_only_our_entry_under_the_resource_version():
    account = {"metadata": {"resourceVersion": "7"}, "imagePullSecrets": [{"name": "theirs"}]}
    ops = pullsecrets.append_ops(account, "ours")
    assert ops == [{"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                   {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "ours"}}]
    assert pullsecrets.append_ops({"metadata": {"resourceVersion": "1"}}, "ours")[1] == \
        {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "ours"}]}
    both = {"metadata": {"resourceVersion": "8"}, "imagePullSecrets": [{"name": "ours"}, {"name": "theirs"}]}
    assert pullsecrets.append_ops(both, "ours") is None
    assert pullsecrets.remove_ops(both, "ours")[1:] == [{"op": "remove", "path": "/imagePullSecrets/0"}]
    assert pullsecrets.remove_ops(account, "ours") is None


def test_namespace_and_service_account_events_concern_only_registries_that_may_select_them():
    targets = {("a", "named"): spec.PullSecrets(namespaces=("apps",)),
               ("a", "selector"): spec.PullSecrets(selector={}, service_accounts=("builder",))}
    assert pullsecrets.concerned(targets, "apps") == [("a", "named"), ("a", "selector")]
    assert pullsecrets.concerned(targets, "elsewhere") == [("a", "selector")]
    assert pullsecrets.concerned(targets, "apps", "default") == [("a", "named")]
    assert pullsecrets.concerned(targets, "apps", "builder") == [("a", "selector")]


def test_robot_password_is_generated_once_kept_and_in_htpasswd_but_not_published():
    s, first, objects = Pipeline().run({**USERS, **PULL})
    assert first.robot and first.robot.current.user == ROBOT_USER and ROBOT_USER not in first.passwords
    assert ROBOT_USER in htpasswd.parse(first.htpasswd)
    _, again, _ = Pipeline().run({**USERS, **PULL}, decode_secrets(objects))
    assert again.robot == first.robot and again.htpasswd == first.htpasswd
    password = first.robot.current.password.encode()
    assert password not in b"".join(decode_secrets(objects)["reg-passwords"].values())
    _, without, _ = Pipeline().run(USERS)
    assert without.robot is None and ROBOT_USER not in htpasswd.parse(without.htpasswd)


def test_token_mode_grants_the_robot_pull_on_everything_before_any_user_rule():
    raw = {"auth": {"mode": "token", "users": [{"name": "alice"}],
                    "access": [{"anonymous": True, "repositories": ["*"], "actions": ["*"]}]}, **PULL}
    s, mat, _ = Pipeline().run(raw)
    rules = token.service_config(s, mat)["access"]
    assert rules[0] == {"users": [ROBOT_USER], "groups": [], "anonymous": False, "repositories": ["*"],
                        "catalog": False, "actions": ["pull"]}
    assert len(rules) == 2


def test_pull_secret_is_a_labelled_dockerconfigjson_with_the_ca():
    s, mat, _ = Pipeline().run({**USERS, **PULL})
    obj = pullsecrets.secret(s, "uid-1", "apps", mat, "cluster.local")
    assert obj["type"] == "kubernetes.io/dockerconfigjson" and obj["metadata"]["name"] == "reg.ns-pull"
    assert obj["metadata"]["labels"]["registry.operator.dev/pull-secret-of"] == "uid-1"
    assert base64.b64decode(obj["data"]["ca.crt"]) == mat.client_ca_pem
    assert "ownerReferences" not in obj["metadata"]


def test_pull_secrets_condition_says_why_and_an_event_when_it_goes_false():
    s = spec.parse("reg", "ns", {**USERS, **PULL})
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    missing = [material.Problem("ServiceAccountNotFound", "waiting for ServiceAccount apps/default")]
    bad = conditions.compute(s, 1, [], {"reg": None}, {}, None, now, pull_problems=missing)
    cond = {c["type"]: c for c in bad["conditions"]}["PullSecrets"]
    assert (cond["status"], cond["reason"]) == ("False", "ServiceAccountNotFound")
    assert ("Warning", "ServiceAccountNotFound", cond["message"]) in conditions.transitions(None, bad)
    good = conditions.compute(s, 1, [], {"reg": None}, {"pullSecrets": {"count": 2}}, bad, now, pull_problems=[])
    assert {c["type"]: c for c in good["conditions"]}["PullSecrets"]["message"] == "current in 2 namespace(s)"
    plain = conditions.compute(s, 1, [], {"reg": None}, {}, None, now)
    assert "PullSecrets" not in {c["type"] for c in plain["conditions"]}


def test_rotation_adds_a_second_robot_hands_it_out_after_propagation_and_retires_the_first():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    wait = dt.timedelta(seconds=120)
    raw = {**USERS, **PULL}
    s = spec.parse("reg", "ns", raw)

    def step(observed, rotation, now, retire=False):
        """(material, the Secrets as stored after applying what it renders)"""
        mat = material.decide(s, observed, now=now, rotation=rotation, propagation=wait, retire=retire)
        return mat, decode_secrets(render.desired(s, mat, OWNER, "registry-operator:test"))

    first, stored = step({}, "r1", t0)  # the annotation on a new Registry is no request: nothing to rotate
    old = first.robot.current
    assert first.robot.next is None and first.robot.handled == "r1"
    same, _ = step(stored, "r1", t0 + wait)
    assert same.robot == first.robot

    rotating, stored = step(stored, "r2", t0)
    assert rotating.robot.current == old and rotating.robot.next.user == robot.USERS[1]
    assert set(htpasswd.parse(rotating.htpasswd)) == {"alice", *robot.USERS}
    assert rotating.robot.switch_at() == t0
    still, _ = step(stored, "r2", t0 + wait / 2)
    assert still.robot == rotating.robot  # copies keep the old one while pods may not know the new one

    switched, stored = step(stored, "r2", t0 + wait)
    assert switched.robot.current == rotating.robot.next and switched.robot.retiring == old
    assert set(htpasswd.parse(switched.htpasswd)) == {"alice", *robot.USERS}
    done, stored = step(stored, "r2", t0 + wait, retire=True)
    assert done.robot.valid == [rotating.robot.next] and set(htpasswd.parse(done.htpasswd)) == {"alice", robot.USERS[1]}

    again, _ = step(stored, "r3", t0 + 2 * wait)  # the next rotation goes back to the first user name
    assert again.robot.next.user == robot.USERS[0] and again.robot.next.password != old.password
