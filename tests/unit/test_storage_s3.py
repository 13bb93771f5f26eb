"""storage.s3: what a bucket changes in the spec, the rendered config, the pods, the GC Job and the status."""

import datetime as dt

import pytest
import yaml
from builders import OWNER, by_key, decode_secrets

from registry_operator import conditions, garbage_collection, material, names, spec
from registry_operator.observe import candidates, referenced_secrets
from registry_operator.render import garbage_collection as gc_render

USERS = {"auth": {"users": [{"name": "alice"}]}}
CREDS = {"name": "s3-creds"}
S3 = {"bucket": "images", "endpoint": "http://127.0.0.1:7070", "forcePathStyle": True, "rootDirectory": "/reg",
      "credentialsSecretRef": CREDS}
KEYS = {"accessKeyId": b"AKIDEXAMPLE", "secretAccessKey": b"wJalrXUtnFEMI-very-secret"}


def _config(objects):
    return yaml.safe_load(by_key(objects)[("ConfigMap", "reg-config")]["data"]["config.yml"])


def _pod(objects):
    return by_key(objects)[("Deployment", "reg")]["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", ["3", "2.8"])
def test_config_names_the_bucket_and_the_keys_come_from_the_users_secret(pipeline, version):
    _, _, objects = pipeline.run({**USERS, "version": version, "storage": {"s3": S3}}, {"s3-creds": KEYS})
    storage = _config(objects)["storage"]
    assert "filesystem" not in storage
    assert storage["s3"] == {"bucket": "images", "region": "us-east-1", "regionendpoint": "http://127.0.0.1:7070",
                             "forcepathstyle": True, "secure": False, "v4auth": True, "rootdirectory": "/reg"}
    assert storage["redirect"] == {"disable": True}  # clients need to reach the registry only
    env = {e["name"]: e for e in _pod(objects)["containers"][0]["env"]}
    assert env["REGISTRY_STORAGE_S3_ACCESSKEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "accessKeyId"}}
    assert env["REGISTRY_STORAGE_S3_SECRETKEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "secretAccessKey"}}
    rendered = yaml.safe_dump(objects)
    assert "wJalrXUtnFEMI" not in rendered and "AKIDEXAMPLE" not in rendered  # only references, never values


def test_aws_defaults_https_and_redirects_on_request(pipeline):
    raw = {**USERS, "storage": {"s3": {"bucket": "images", "region": "eu-west-1", "redirect": True}}}
    _, _, objects = pipeline.run(raw)
    storage = _config(objects)["storage"]
    assert storage["s3"] == {"bucket": "images", "region": "eu-west-1", "forcepathstyle": False, "secure": True,
                             "v4auth": True}
    assert storage["redirect"] == {"disable": False}
    assert not any(e["name"].startswith("REGISTRY_STORAGE_S3") for e in _pod(objects)["containers"][0]["env"])


def test_a_bucket_needs_no_volume_and_lets_replicas_share_it(pipeline):
    _, _, objects = pipeline.run({**USERS, "replicas": 3, "storage": {"s3": S3}}, {"s3-creds": KEYS})
    keys = by_key(objects)
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in keys)
    pod = _pod(objects)
    assert "data" not in {v["name"] for v in pod["volumes"]}
    assert "data" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    deployment = keys[("Deployment", "reg")]["spec"]
    assert deployment["replicas"] == 3 and deployment["strategy"]["type"] == "RollingUpdate"
    assert ("PodDisruptionBudget", "reg") in keys


def test_workload_identity_runs_the_pods_as_the_named_service_account_without_its_api_token(pipeline):
    raw = {**USERS, "storage": {"s3": {"bucket": "images", "serviceAccountName": "registry-s3"}}}
    s, _, objects = pipeline.run(raw)
    pod = _pod(objects)
    assert pod["serviceAccountName"] == "registry-s3" and pod["automountServiceAccountToken"] is False
    job = gc_render.job(s, OWNER, "r1", None, suspend=False, node=None, operator_image="img")
    job = job["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == "registry-s3" and job["automountServiceAccountToken"] is False
    _, _, plain = pipeline.run({**USERS, "storage": {"s3": {"bucket": "images"}}})
    assert "serviceAccountName" not in _pod(plain)


def test_rotated_keys_roll_the_pods_and_unchanged_ones_do_not(pipeline):
    raw = {**USERS, "storage": {"s3": S3}}
    _, _, objects = pipeline.run(raw, {"s3-creds": KEYS})
    ours = decode_secrets(objects)  # kept material: only the keys differ between the runs below

    def inputs_hash(keys):
        _, _, objects = pipeline.run(raw, {**ours, "s3-creds": keys})
        return by_key(objects)[("Deployment", "reg")]["spec"]["template"]["metadata"]["annotations"][
            names.POD_INPUTS_HASH]

    first = inputs_hash(KEYS)
    assert inputs_hash(dict(KEYS)) == first
    assert inputs_hash({**KEYS, "secretAccessKey": b"rotated"}) != first


@pytest.mark.parametrize(("observed", "reason"), [
    ({}, "S3CredentialsNotFound"),
    ({"s3-creds": {"accessKeyId": b"AKID"}}, "S3CredentialsInvalid"),
    ({"s3-creds": {**KEYS, "secretAccessKey": b""}}, "S3CredentialsInvalid"),
])
def test_unusable_credentials_are_a_problem_that_never_quotes_them(observed, reason):
    s = spec.parse("reg", "ns", {**USERS, "storage": {"s3": S3}})
    problems = material.decide(s, observed).problems
    assert [p.reason for p in problems] == [reason]
    assert "AKID" not in problems[0].message and "s3-creds" in problems[0].message


def test_the_credentials_secret_is_referenced_and_the_gc_job_observed_but_no_claim():
    s = spec.parse("reg", "ns", {**USERS, "storage": {"s3": S3}})
    assert "s3-creds" in referenced_secrets(s)
    kinds = {(kind, name) for _, kind, name in candidates(s, False)}
    assert ("Job", "reg-gc") in kinds and not any(kind == "PersistentVolumeClaim" for kind, _ in kinds)


def test_garbage_collection_runs_on_a_bucket_unpinned_with_the_credentials(pipeline):
    raw = {**USERS, "storage": {"s3": S3}, "garbageCollection": {"deleteUntagged": True}}
    s = spec.parse("reg", "ns", raw)
    annotated = {"metadata": {"annotations": {names.GC_REQUESTED: "now"}}}
    plan = garbage_collection.plan(s, annotated, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert plan.hold_read_only and plan.job == ("now", None)
    job = gc_render.job(s, OWNER, "now", None, suspend=False, node=None, operator_image="img")
    pod = job["spec"]["template"]["spec"]
    assert "affinity" not in pod and {v["name"] for v in pod["volumes"]} == {"config", "tmp"}
    for container in [*pod["initContainers"], *pod["containers"]]:  # the measurements list the bucket too
        env = {e["name"] for e in container["env"]}
        assert {"REGISTRY_STORAGE_S3_ACCESSKEY", "REGISTRY_STORAGE_S3_SECRETKEY"} <= env, container["name"]


@pytest.mark.parametrize("other", [{"persistentVolumeClaim": {}}, {"emptyDir": {}}])
def test_only_one_storage_kind(other):
    with pytest.raises(ValueError, match="exactly one"):
        spec.parse("reg", "ns", {**USERS, "storage": {"s3": S3, **other}})


def test_status_names_the_storage_kind_and_warns_of_a_plain_endpoint():
    kinds = {k: spec.parse("reg", "ns", {**USERS, "storage": v}).storage.kind
             for k, v in (("s3", {"s3": S3}), ("pvc", {"persistentVolumeClaim": {}}), ("none", {}))}
    assert kinds == {"s3": "S3", "pvc": "PersistentVolumeClaim", "none": "EmptyDir"}
    plain = spec.parse("reg", "ns", {**USERS, "storage": {"s3": S3}})
    assert [w.reason for w in conditions.weaknesses(plain)] == ["PlainS3Endpoint"]
    tls = spec.parse("reg", "ns", {**USERS, "storage": {"s3": {**S3, "endpoint": "https://s3.example:9000"}}})
    assert conditions.weaknesses(tls) == []


def test_a_bucket_gets_more_memory_by_default_and_the_users_resources_win(pipeline):
    _, _, objects = pipeline.run({**USERS, "storage": {"s3": S3}}, {"s3-creds": KEYS})
    assert _pod(objects)["containers"][0]["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                                           "limits": {"memory": "1Gi"}}
    _, _, volume = pipeline.run(USERS)
    assert _pod(volume)["containers"][0]["resources"]["limits"] == {"memory": "512Mi"}
    mine = {"limits": {"memory": "2Gi"}}
    _, _, objects = pipeline.run({**USERS, "storage": {"s3": S3}, "resources": mine}, {"s3-creds": KEYS})
    assert _pod(objects)["containers"][0]["resources"] == mine
