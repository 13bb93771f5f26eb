"""Two operator processes with --leader-elect: one writes, the other stands by (and is live), then takes over."""

from __future__ import annotations

import os
import signal
import time

from registries import is_ready, manifest, registry

USERS = {"auth": {"users": [{"name": "alice"}]}}


def test_standby_takes_over_when_the_leader_dies(cluster, kube_client, namespace, operator_factory, wait_for):
    env = {"REGISTRY_OPERATOR_LEADER_ELECTION": "true", "REGISTRY_OPERATOR_LEASE_NAMESPACE": namespace,
           "REGISTRY_OPERATOR_LEASE_SECONDS": "6"}
    args = ["--namespace", namespace]
    leader = operator_factory(args=args, env={**env, "POD_NAME": "op-a"})
    leader.wait_for_log("acquired Lease")
    standby = operator_factory(args=args, env={**env, "POD_NAME": "op-b"})  # live while it waits
    standby.wait_for_log("waiting for Lease")

    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    assert "applied" in leader.log() and "applied" not in standby.log()

    os.kill(leader.pid, signal.SIGKILL)
    killed = time.monotonic()
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}, {"name": "bob"}]}}))
    generation = registry(kube_client, "reg", namespace)["metadata"]["generation"]
    wait_for(lambda: registry(kube_client, "reg", namespace)["status"].get("observedGeneration") == generation,
             timeout=60, what="the standby reconciled the change")
    print(f"takeover and reconcile {time.monotonic() - killed:.1f}s after the leader was killed")
    # The status write that ends the wait can land a moment before the log line that reports it.
    standby.wait_for_log("acquired Lease")
    standby.wait_for_log(r"reg: applied")
    holder = cluster.kubectl("get", "lease", "registry-operator", "-n", namespace, "-o",
                             "jsonpath={.spec.holderIdentity}").stdout
    assert holder == "op-b"
