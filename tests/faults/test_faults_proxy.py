"""Issue 9, proof by faults: the operator's API traffic goes through a proxy that resets connections, delays,
throttles (429), fails (500/503) and refuses writes (409) for a while. Once the faults stop, with no further
event from anyone:

- every Registry is Ready for its current generation;
- no generated Secret changed (UID and bytes; a Registry that gained a user only gained entries) and every
  Registry's material is one consistent set;
- no trigger was lost: spec changes and deleted children from the fault window are all reflected;
- writes per Registry stay bounded, and a settled cluster makes no writes at all.
"""

from __future__ import annotations

import time

from faultkit import (
    MIX,
    add_user,
    all_ready,
    changes,
    create_password_secret,
    create_registry,
    generated_secrets,
    htpasswd_text,
    inconsistencies,
    inputs_hashes,
    patch_spec,
    referenced_users,
    report,
    wait,
)
from faultproxy import NO_FAULTS, Faults, owner, writes_by
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Service

# About a quarter of all requests (watches included) meet a fault: 19 % fail, 7 % are delayed; and 30 % of the
# writes that pass are refused with 409.
FAULTS = Faults(reset=0.05, reset_after=0.03, latency=0.07, throttle=0.04, error=0.07, conflict=0.30,
                max_latency=1.5, retry_after=1)  # fmt: skip
FAULT_WINDOW = 30.0  # seconds
QUIET_WINDOW = 8.0  # seconds without any write once everything is settled
# A Registry's whole life here (creation, a change or a restored child, retries through 30 s of faults) in
# writes that reached the API server. A hot loop makes hundreds within seconds.
MAX_WRITES_PER_REGISTRY = 60
# After the faults stop: the backoff cap (conftest.OPERATOR_ENV, 4 s) plus a reconcile, with a wide margin. Much
# longer means the trigger was lost and some unrelated later event happened to reconcile the Registry.
RECOVERY = 30.0

ANNOTATION = "faults.test/changed-during-faults"


def _exists(client: Client, kind: type[Service] | type[ConfigMap], name: str, namespace: str) -> bool:
    try:
        client.get(kind, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    return True


def test_faults_leave_material_alone_and_lose_no_trigger(kube_client, namespace, fault_proxy, proxied_kubeconfig,
                                                         operators):  # fmt: skip
    t_start = time.time()
    create_password_secret(kube_client, namespace)
    operator = operators.start(proxied_kubeconfig, namespace)
    for name, spec in MIX.items():
        create_registry(kube_client, namespace, name, spec)
    took = wait(all_ready(kube_client, namespace, MIX), 120, "every Registry Ready before the faults")
    report(f"faults: {len(MIX)} Registries Ready in {took:.1f} s (through the proxy, no faults)")
    time.sleep(2)  # the last child events
    before = generated_secrets(kube_client, namespace)
    hashes_before = inputs_hashes(kube_client, namespace)
    assert before, "the operator generated no Secrets"

    # ------------------------------------------------------------------ the fault window, with changes in it
    t_faults = time.time()
    fault_proxy.set_faults(FAULTS)
    cuts = 0
    steps = [
        (0.25, lambda: add_user(kube_client, namespace, "gen-a", "carol")),
        (0.30, lambda: patch_spec(kube_client, namespace, "ref-a", {"podAnnotations": {ANNOTATION: "1"}})),
        (0.40, lambda: kube_client.delete(Service, "tls-b", namespace=namespace)),
        (0.50, lambda: add_user(kube_client, namespace, "tok-a", "erin")),
        (0.60, lambda: kube_client.delete(ConfigMap, "gen-b-config", namespace=namespace)),
        (0.70, lambda: patch_spec(kube_client, namespace, "tls-a", {"podAnnotations": {ANNOTATION: "1"}})),
    ]
    for at, step in steps:
        time.sleep(max(0.0, t_faults + at * FAULT_WINDOW - time.time()))
        step()
        cuts += fault_proxy.cut_streams()  # every watch breaks too: kopf must resume them without losing events
    time.sleep(max(0.0, t_faults + FAULT_WINDOW - time.time()))
    fault_proxy.set_faults(NO_FAULTS)
    t_calm = time.time()
    operator.assert_running()

    # ------------------------------------------------------------------ no further event from anyone: converge
    def reflected() -> bool | list[str]:
        missing = []
        deployments = {d.metadata.name: d for d in kube_client.list(Deployment, namespace=namespace)}
        for name in ("ref-a", "tls-a"):
            template = deployments[name].spec.template.metadata.annotations or {}
            if template.get(ANNOTATION) != "1":
                missing.append(f"{name}: podAnnotations change")
        if not _exists(kube_client, Service, "tls-b", namespace):
            missing.append("tls-b: deleted Service")
        if not _exists(kube_client, ConfigMap, "gen-b-config", namespace):
            missing.append("gen-b: deleted ConfigMap")
        stored = generated_secrets(kube_client, namespace)
        for name, user in (("gen-a", "carol"), ("tok-a", "erin")):
            if f"{user}:" not in htpasswd_text(stored.get(f"{name}-htpasswd")):
                missing.append(f"{name}: user {user}")
        return missing or True

    recovered = wait(reflected, RECOVERY, "the changes made during the faults")
    ready = wait(all_ready(kube_client, namespace, MIX), RECOVERY, "every Registry Ready after the faults")
    t_settled = time.time()
    time.sleep(QUIET_WINDOW)

    # ------------------------------------------------------------------ what the proxy saw
    records = fault_proxy.snapshot(t_start)
    during = [r for r in records if t_faults <= r.at < t_calm]
    injected = [r for r in during if r.fault]
    # Writes about our Registries only: a leader-election Lease, if the operator holds one, is renewed by writes.
    quiet_writes = [r for r in fault_proxy.snapshot(t_settled + 1.0) if r.write and r.forwarded and owner(r, MIX)]
    per_registry = writes_by(records, MIX)
    attempts = writes_by(records, MIX, forwarded_only=False)
    report(f"faults: {len(during)} requests in {FAULT_WINDOW:.0f} s of faults, {len(injected)} faulted "
           f"({100 * len(injected) / max(1, len(during)):.0f} %: "
           + ", ".join(f"{f} {sum(1 for r in injected if r.fault == f)}"
                       for f in ("reset", "reset_after", "latency", "throttle", "error", "conflict"))
           + f"), {cuts} watch streams cut")  # fmt: skip
    report(f"faults: changes reflected {recovered:.1f} s and all Ready {recovered + ready:.1f} s after the "
           f"faults stopped")  # fmt: skip
    report("faults: writes per Registry that reached the API server (attempts incl. refused): "
           + ", ".join(f"{n} {per_registry[n]} ({attempts[n]})" for n in MIX)
           + f"; unattributed {per_registry['']}; max {max(per_registry[n] for n in MIX)}")  # fmt: skip
    report(f"faults: writes in the {QUIET_WINDOW:.0f} s after settling: {len(quiet_writes)}")

    # ------------------------------------------------------------------ the claims
    after = generated_secrets(kube_client, namespace)
    grown = {f"{n}-{s}" for n in ("gen-a", "tok-a") for s in ("htpasswd", "passwords", "http-secret")}
    changed_secrets = changes(before, after, grown)
    report(f"faults: generated Secrets changed: {len(changed_secrets)} of {len(before)}")
    assert not changed_secrets, changed_secrets
    assert inputs_hashes(kube_client, namespace) == hashes_before, "pods were rolled"
    broken = {n: problems for n in MIX
              if (problems := inconsistencies(kube_client, namespace, n, referenced_users(MIX[n])))}  # fmt: skip
    assert not broken, broken
    assert not quiet_writes, [(r.method, r.path) for r in quiet_writes]
    assert max(per_registry[n] for n in MIX) <= MAX_WRITES_PER_REGISTRY, per_registry
    operator.assert_running()
