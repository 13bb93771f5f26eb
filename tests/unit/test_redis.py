"""spec.redis: the blob-descriptor cache in a user's Redis, rendered for 2.8 and 3.x, its password kept out of
the ConfigMap, a missing password Secret reported, the GC Job that flushes it after a collection, and the
probe behind the `Redis` condition."""

import asyncio
import datetime as dt
import socket
import threading

import pytest
import yaml
from builders import OWNER, by_key

from registry_operator import cacheflush, conditions, material, observe, redisprobe, spec
from registry_operator.render import garbage_collection as gc_render

CLAIM = {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"]}}
REDIS = {"address": "redis.cache.svc:6379", "db": 3, "passwordSecretRef": {"name": "redis-auth"}}
RAW = {"auth": {"users": [{"name": "alice"}]}, "storage": CLAIM, "redis": REDIS}
SECRETS = {"redis-auth": {"password": b"s3cret-redis-password"}}


def _config(objects):
    return yaml.safe_load(by_key(objects)[("ConfigMap", "reg-config")]["data"]["config.yml"])


@pytest.mark.parametrize(("version", "section"), [
    ("3", {"addrs": ["redis.cache.svc:6379"], "db": 3, "maxretries": -1}),
    ("2.8", {"addr": "redis.cache.svc:6379", "db": 3}),
])
def test_config_names_redis_as_the_cache_per_version(pipeline, version, section):
    _, _, objects = pipeline.run({**RAW, "version": version}, SECRETS)
    rendered = _config(objects)
    assert rendered["storage"]["cache"] == {"blobdescriptor": "redis"}
    timeouts = {"dialtimeout": "1s", "readtimeout": "1s", "writetimeout": "1s"}
    assert rendered["redis"] == {**section, **timeouts}


def test_without_redis_the_cache_stays_in_memory(pipeline):
    _, _, objects = pipeline.run({**RAW, "redis": None})
    assert _config(objects)["storage"]["cache"] == {"blobdescriptor": "inmemory"} and "redis" not in _config(objects)


def test_the_password_reaches_the_pod_from_the_users_secret_only(pipeline):
    _, mat, objects = pipeline.run(RAW, SECRETS)
    assert not mat.problems
    container = by_key(objects)[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["REGISTRY_REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    assert not any(b"s3cret-redis-password" in repr(o).encode() for o in objects)  # in no object we write
    _, _, objects = pipeline.run({**RAW, "redis": {"address": "10.0.0.9:6379"}})
    container = by_key(objects)[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]
    assert "REGISTRY_REDIS_PASSWORD" not in {e["name"] for e in container["env"]}


def test_the_password_secret_is_referenced_and_its_absence_reported():
    s = spec.parse("reg", "ns", RAW)
    assert "redis-auth" in observe.referenced_secrets(s)
    assert [p.reason for p in material.decide(s, {}).problems] == ["RedisPasswordSecretNotFound"]
    wrong_key = {"redis-auth": {"pass": b"x"}}
    assert [p.reason for p in material.decide(s, wrong_key).problems] == ["RedisPasswordSecretKeyMissing"]
    assert not material.decide(s, SECRETS).problems


def test_spec_refuses_redis_on_an_empty_dir():
    with pytest.raises(ValueError, match="persistentVolumeClaim"):
        spec.parse("reg", "ns", {**RAW, "storage": {}})


def test_gc_job_flushes_the_cache_after_garbage_collect():
    s = spec.parse("reg", "ns", {**RAW, "garbageCollection": {}})
    job = gc_render.job(s, OWNER, "r1", None, suspend=True, node=None, operator_image="op:1")
    pod = job["spec"]["template"]["spec"]
    # init containers run to success one after the other, before the containers: flush only after the collection
    [_, collect], [flush, _] = pod["initContainers"], pod["containers"]
    assert collect["args"][0] == "garbage-collect"
    assert flush["image"] == "op:1" and flush["command"] == ["python", "-m", "registry_operator.cacheflush"]
    assert flush["args"] == ["--address", "redis.cache.svc:6379", "--db", "3"]
    assert flush["env"] == [{"name": "REGISTRY_REDIS_PASSWORD",
                             "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}}]
    assert "volumeMounts" not in flush  # it needs neither the storage nor the config
    dry = spec.parse("reg", "ns", {**RAW, "garbageCollection": {"dryRun": True}})
    pod = gc_render.job(dry, OWNER, "r1", None, suspend=True, node=None, operator_image="op:1")["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == [gc_render.USAGE_CONTAINER]  # no flush


class _FakeRedis:
    """A loopback socket answering like Redis, recording what it was sent (for the RESP framing only: the e2e
    test flushes a real redis-server)."""

    def __init__(self, replies: list[bytes]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.received = b""
        self.thread = threading.Thread(target=self._serve, args=(replies,), daemon=True)
        self.thread.start()

    def _serve(self, replies: list[bytes]) -> None:
        conn, _ = self.server.accept()
        with conn:
            for reply in replies:
                self.received += conn.recv(4096)
                conn.sendall(reply)
        self.server.close()


def test_flush_speaks_resp_and_reports_refusals_without_the_password():
    ok = _FakeRedis([b"+OK\r\n"] * 3)
    cacheflush.flush(ok.address, 3, "pw")
    ok.thread.join(5)
    assert ok.received == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*1\r\n$7\r\nFLUSHDB\r\n"
    refused = _FakeRedis([b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"])
    with pytest.raises(cacheflush.RedisError, match="AUTH failed: -WRONGPASS") as exc:
        cacheflush.flush(refused.address, 0, "wrong-password")
    assert "wrong-password" not in str(exc.value)
    with pytest.raises(cacheflush.RedisError, match="not host:port"):
        cacheflush.flush("redis", 0, None)
    assert cacheflush.split_address("[::1]:6379") == ("::1", 6379)


def _probe(replies: list[bytes], password: str | None = None):
    server = _FakeRedis(replies)
    found = asyncio.run(redisprobe.probe(spec.Redis(server.address, 3), password))
    server.thread.join(5)
    return found, server.received


def _info(policy: str) -> bytes:
    body = f"# Memory\r\nused_memory:1024\r\nmaxmemory:67108864\r\nmaxmemory_policy:{policy}\r\n".encode()
    return b"$%d\r\n%s\r\n" % (len(body), body)


def test_probe_accepts_a_cache_and_names_what_is_wrong_without_the_password():
    found, sent = _probe([b"+OK\r\n", b"+OK\r\n", _info("allkeys-lru")], "pw")
    assert found is None and sent.endswith(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
    found, _ = _probe([b"+OK\r\n", _info("noeviction")])
    assert found.reason == "RedisNotACache" and "noeviction" in found.message
    found, _ = _probe([b"-WRONGPASS invalid username-password pair\r\n"], "the-wrong-password")
    assert found.reason == "RedisAuthFailed" and "the-wrong-password" not in found.message
    found, _ = _probe([b"-NOAUTH Authentication required.\r\n"])
    assert found.reason == "RedisAuthRequired"
    closed = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    assert asyncio.run(redisprobe.probe(spec.Redis(address), None)).reason == "RedisUnreachable"


def test_redis_condition_is_its_own_and_warns_when_false():
    s = spec.parse("reg", "ns", RAW)
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": {
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}}
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def status(problems):
        return conditions.compute(s, 1, [], {"reg": deployment}, {"endpoint": "reg.ns.svc:5000"}, None, now,
                                  redis_problems=problems)

    up = {c["type"]: c for c in status([])["conditions"]}
    assert up["Redis"]["status"] == "True" and "redis.cache.svc:6379 db 3" in up["Redis"]["message"]
    down = status([material.Problem("RedisUnreachable", "Redis redis.cache.svc:6379: cannot connect")])
    found = {c["type"]: c for c in down["conditions"]}
    assert found["Redis"]["reason"] == "RedisUnreachable" and found["Ready"]["status"] == "True"  # storage serves
    assert ("Warning", "RedisUnreachable", "Redis redis.cache.svc:6379: cannot connect") in conditions.transitions(
        status([]), down)
    assert "Redis" not in {c["type"] for c in status(None)["conditions"]}  # not probed: nothing said
