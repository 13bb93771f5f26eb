"""Issue 9 on the real API server: refused writes, name conflicts and bad input never loop or churn.

Each test drives `reconcile` in-process (no kopf, no timing races) with a real lightkube client against the
real kube-apiserver; refusals come from the real server, through a real admission webhook or real RBAC.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from admission import refusing_webhook
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import ResourceQuota
from localcluster import namespace_manifest
from registries import get, manifest, registry

from registry_operator import names as names_
from registry_operator import pki
from registry_operator.coalesce import Retry
from registry_operator.config import Config
from registry_operator.reconcile import Context, reconcile

USERS = {"auth": {"users": [{"name": "alice"}, {"name": "ci@corp"}]}}


def run(kubeconfig: str, steps: Callable[[Context], Any], config: Config | None = None) -> Any:
    """Run `steps(ctx)` in one event loop with an operator context (the operator's field manager)."""

    async def main() -> Any:
        client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager=names_.FIELD_MANAGER)
        ctx = Context(client=client, config=config or Config())
        try:
            return await steps(ctx)
        finally:
            await ctx.client.close()

    return asyncio.run(main())


def conditions(client, name: str, namespace: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (registry(client, name, namespace).get("status") or {}).get("conditions") or ()}


def secret_data(client, name: str, namespace: str) -> dict[str, bytes] | None:
    obj = get(client, "Secret", name, namespace)
    return {k: base64.b64decode(v) for k, v in obj["data"].items()} if obj else None


def wait_until_refused(cluster, namespace: str, hook) -> None:
    """The API server picks webhook configurations up asynchronously: wait until a write is refused."""
    probe = f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: probe\n  namespace: {namespace}\n"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if cluster.kubectl("apply", "-f", "-", input=probe, check=False).returncode != 0:
            return
        cluster.kubectl("delete", "secret", "probe", "-n", namespace, check=False)
        time.sleep(0.2)
    raise AssertionError("the webhook never refused a write")


@pytest.mark.parametrize("code", [409, 429, 500, 503])
def test_refused_secret_writes_keep_material_and_roll_nothing(cluster, kube_client, kubeconfig, namespace, code):
    cluster.apply(manifest("reg", namespace, USERS))
    with refusing_webhook(cluster, namespace, ["secrets"]) as hook:
        hook.refuse = code
        wait_until_refused(cluster, namespace, hook)

        async def refused(ctx: Context) -> list[bytes]:
            cas = []
            for _ in range(4):
                with pytest.raises(Retry) as err:
                    await reconcile(ctx, namespace, "reg")
                assert str(code) in str(err.value)
                memory = ctx.memories[(namespace, "reg")]
                cas.append(memory.pending["reg-ca-key"]["tls.crt"])
                assert memory.pending["reg-passwords"]  # the generated passwords are kept too
            return cas

        cas = run(kubeconfig, refused)
        assert len(set(cas)) == 1, "a refused write made a new CA"
        # Nothing that reads the refused Secrets was applied: no pods on material that does not exist.
        assert get(kube_client, "Deployment", "reg", namespace) is None
        state = conditions(kube_client, "reg", namespace)
        assert state["Degraded"]["status"] == "True" and state["Degraded"]["reason"] == "ApplyFailed"
        assert state["Progressing"]["reason"] == "Retrying"
        assert "password" not in state["Degraded"]["message"].lower() or "passwords'" in state["Degraded"]["message"]

        async def recovered(ctx: Context) -> None:
            # The first attempts' material must be what lands: the same context carries it over.
            ctx.memories.clear()
            hook.refuse = code
            with pytest.raises(Retry):
                await reconcile(ctx, namespace, "reg")
            pending = dict(ctx.memories[(namespace, "reg")].pending)
            hook.refuse = None
            await reconcile(ctx, namespace, "reg")
            for secret, data in pending.items():
                assert secret_data(kube_client, secret, namespace) == data, secret
            assert not ctx.memories[(namespace, "reg")].pending

        run(kubeconfig, recovered)
    assert get(kube_client, "Deployment", "reg", namespace) is not None


def test_forbidden_secret_writes_keep_material(cluster, kube_client, namespace, tmp_path):
    """An operator whose RBAC lacks Secret writes: no new CA per attempt, no Deployment, Forbidden in status."""
    cluster.apply(f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: limited, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: limited, namespace: {namespace}}}
rules:
  - apiGroups: [""]
    resources: [secrets, configmaps, services, persistentvolumeclaims, events]
    verbs: [get, list, watch, create]
  - apiGroups: [""]
    resources: [configmaps, services, events]
    verbs: [patch]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [registry.operator.dev]
    resources: [registries, registries/status, registryindexes, registryindexes/status]
    verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: limited, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited}}
subjects: [{{kind: ServiceAccount, name: limited, namespace: {namespace}}}]
""")
    limited = str(cluster.token_kubeconfig(tmp_path / "limited", namespace, "limited"))
    cluster.apply(manifest("reg", namespace, USERS))

    async def attempts(ctx: Context) -> set[bytes]:
        cas = set()
        for _ in range(3):
            with pytest.raises(Retry) as err:
                await reconcile(ctx, namespace, "reg")
            assert "may not write" in str(err.value)
            cas.add(ctx.memories[(namespace, "reg")].pending["reg-ca-key"]["tls.crt"])
        return cas

    assert len(run(limited, attempts)) == 1
    assert get(kube_client, "Deployment", "reg", namespace) is None
    assert conditions(kube_client, "reg", namespace)["Degraded"]["reason"] == "Forbidden"


def test_invalid_child_is_reported_once_and_not_sent_again(cluster, kube_client, kubeconfig, namespace):
    """A Service the API server rejects (its nodePort is taken): Degraded, and later passes send nothing."""
    cluster.apply(f"""
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: {namespace}}}
spec:
  type: NodePort
  selector: {{app: other}}
  ports: [{{port: 80, nodePort: 31555}}]
""")
    cluster.apply(manifest("reg", namespace, {**USERS, "service": {"type": "NodePort", "nodePort": 31555}}))

    async def passes(ctx: Context) -> list[Any]:
        first = await reconcile(ctx, namespace, "reg")  # no Retry: only new input can fix this
        second = await reconcile(ctx, namespace, "reg")
        return [first, second]

    first, second = run(kubeconfig, passes)
    assert first.status_written and ("Service", "reg") not in first.written
    assert second.written == [] and not second.status_written
    state = conditions(kube_client, "reg", namespace)
    assert state["Degraded"]["reason"] == "ApplyRefused" and "already allocated" in state["Degraded"]["message"]
    assert state["Progressing"]["status"] == "False"


def test_mistyped_pass_through_field_is_refused_not_retried(cluster, kube_client, kubeconfig, namespace):
    """spec.affinity passes the CRD as is; server-side apply answers 500 for a mistyped field. That is bad
    input: reported once, not retried, and not sent again."""
    cluster.apply(manifest("reg", namespace, {**USERS, "affinity": {"podAntiAffinity": "yes"}}))

    async def passes(ctx: Context) -> list[Any]:
        return [await reconcile(ctx, namespace, "reg"), await reconcile(ctx, namespace, "reg")]

    first, second = run(kubeconfig, passes)  # raises Retry if the refusal were taken for a passing failure
    assert ("Deployment", "reg") not in first.written and ("Secret", "reg-tls") in first.written
    assert second.written == [] and not second.status_written
    degraded = conditions(kube_client, "reg", namespace)["Degraded"]
    assert degraded["reason"] == "ApplyRefused" and "podAntiAffinity" in degraded["message"]


def test_name_conflict_writes_nothing_and_names_the_object(cluster, kube_client, kubeconfig, namespace):
    cluster.apply(f"""
apiVersion: v1
kind: Secret
metadata: {{name: web-tls, namespace: {namespace}}}
stringData: {{note: someone else's}}
""")
    before = get(kube_client, "Secret", "web-tls", namespace)
    cluster.apply(manifest("web", namespace, USERS))
    outcome = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "web"))
    assert outcome.written == [] and outcome.deleted == []
    after = get(kube_client, "Secret", "web-tls", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    degraded = conditions(kube_client, "web", namespace)["Degraded"]
    assert degraded["reason"] == "NameConflict" and "Secret 'web-tls'" in degraded["message"]
    assert get(kube_client, "Deployment", "web", namespace) is None
    # Said once: the next pass writes nothing at all.
    again = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "web"))
    assert again.written == [] and not again.status_written


@pytest.mark.parametrize("name, spec, field", [
    ("a" * 58, {"auth": {"mode": "token", "users": [{"name": "a"}],
                         "access": [{"users": ["a"], "repositories": ["*"], "actions": ["pull"]}]}}, "metadata.name"),
    ("a" * 64, USERS, "metadata.name"),
    ("foo-token", USERS, "metadata.name"),
    ("reg", {**USERS, "resources": {"requests": {"memory": "lots"}}}, "spec.resources.requests"),
    ("reg", {**USERS, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "spec.resources"),
    ("reg", {"auth": {"users": [{"name": "a b"}]}}, "spec.auth.users[0].name"),
    ("reg", {**USERS, "podLabels": {"bad key!": "x"}}, "spec.podLabels"),
    ("reg", {"auth": {"users": [{"name": "a", "passwordSecretRef": {"name": "../../kube-system/secrets/x"}}]}},
     "spec.auth.users[0].passwordSecretRef.name"),
    ("reg", {**USERS, "tls": {"mode": "Secret", "secretName": "a/b"}}, "spec.tls.secretName"),
    ("reg", {**USERS, "image": " registry:3.1.2"}, "spec.image"),
    ("reg", {"auth": {"users": [{"name": "a", "passwordSecretRef": {"name": "pw", "key": "a/b"}}]}},
     "spec.auth.users[0].passwordSecretRef.key"),
    ("reg", {**USERS, "nodeSelector": {"zone": "a b"}}, "spec.nodeSelector"),
])
def test_schema_rejects_names_the_api_server_would_refuse(cluster, namespace, name, spec, field):
    result = cluster.kubectl("apply", "-f", "-", input=manifest(name, namespace, spec), check=False)
    assert result.returncode != 0 and field in result.stderr, result.stderr


def test_odd_user_names_and_quantities_settle_with_no_writes(cluster, kube_client, kubeconfig, namespace, wait_for):
    spec = {"auth": {"users": [{"name": "ci@corp"}, {"name": "..x"}, {"name": "alice"}]},
            "resources": {"requests": {"cpu": 1, "memory": "1024Mi"}, "limits": {"memory": "2Gi", "cpu": "1.5"}}}
    cluster.apply(manifest("reg", namespace, spec))

    first = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert ("Secret", "reg-passwords") in first.written
    wait_for(lambda: (get(kube_client, "Deployment", "reg", namespace).get("status") or {}).get("availableReplicas"),
             what="Deployment available")
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))  # status catches up with the rollout
    settled = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert settled.written == [] and not settled.status_written
    status = registry(kube_client, "reg", namespace)["status"]
    keys = status["passwordKeys"]
    assert set(keys) == {"ci@corp", "..x"}
    passwords = secret_data(kube_client, "reg-passwords", namespace)
    assert set(passwords) == {"alice", keys["ci@corp"], keys["..x"]}
    htpasswd = secret_data(kube_client, "reg-htpasswd", namespace)["htpasswd"].decode()
    assert [line.split(":")[0] for line in htpasswd.splitlines()] == ["ci@corp", "..x", "alice"]


def test_lost_ca_key_publishes_both_cas_and_rolls_nothing(cluster, kube_client, kubeconfig, namespace):
    cluster.apply(manifest("reg", namespace, USERS))
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    old_ca = secret_data(kube_client, "reg-ca", namespace)["ca.crt"]
    old_tls = secret_data(kube_client, "reg-tls", namespace)["tls.crt"]
    template = get(kube_client, "Deployment", "reg", namespace)["spec"]["template"]
    cluster.kubectl("delete", "secret", "reg-ca-key", "-n", namespace)
    outcome = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert ("Secret", "reg-ca-key") in outcome.written and ("Deployment", "reg") not in outcome.written
    bundle = pki.split(secret_data(kube_client, "reg-ca", namespace)["ca.crt"])
    assert len(bundle) == 2 and bundle[1] == old_ca and bundle[0] != old_ca
    assert secret_data(kube_client, "reg-tls", namespace)["tls.crt"] == old_tls
    assert get(kube_client, "Deployment", "reg", namespace)["spec"]["template"] == template
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}").stdout
    assert "CARotated" in events


def test_token_to_htpasswd_removes_only_the_token_workload(cluster, kube_client, kubeconfig, namespace):
    token = {"auth": {"mode": "token", "users": [{"name": "alice"}],
                      "access": [{"users": ["alice"], "repositories": ["*"], "actions": ["pull"]}]}}
    cluster.apply(manifest("reg", namespace, token))
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert get(kube_client, "Deployment", "reg-token", namespace) is not None
    htpasswd = '{"mode": "htpasswd", "users": [{"name": "alice"}]}'
    cluster.kubectl("patch", "registry", "reg", "-n", namespace, "--type=json", "-p",
                    f'[{{"op": "replace", "path": "/spec/auth", "value": {htpasswd}}}]')
    outcome = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert set(outcome.deleted) == {("Deployment", "reg-token"), ("Service", "reg-token"), ("ConfigMap", "reg-token"),
                                    ("NetworkPolicy", "reg-token")}
    assert get(kube_client, "Secret", "reg-token-signing", namespace) is not None  # keys are kept


def test_deleted_children_come_back_with_the_same_material(cluster, kube_client, kubeconfig, namespace):
    cluster.apply(manifest("reg", namespace, USERS))
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    ca = secret_data(kube_client, "reg-ca-key", namespace)
    for kind, name in [("deployment", "reg"), ("service", "reg"), ("configmap", "reg-config"), ("secret", "reg-tls")]:
        cluster.kubectl("delete", kind, name, "-n", namespace)
    outcome = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert {("Deployment", "reg"), ("Service", "reg"), ("ConfigMap", "reg-config"), ("Secret", "reg-tls")} <= set(
        outcome.written)
    assert secret_data(kube_client, "reg-ca-key", namespace) == ca
    leaf = pki.load_chain(secret_data(kube_client, "reg-tls", namespace)["tls.crt"])
    assert pki.server_renewal_reason(
        pki.KeyPair(secret_data(kube_client, "reg-tls", namespace)["tls.crt"],
                    secret_data(kube_client, "reg-tls", namespace)["tls.key"]),
        [ca["tls.crt"]], sorted(pki.sans(leaf[0]))) is None


def test_two_electors_never_hold_the_lease_together(cluster, kubeconfig, namespace):
    from registry_operator.config import Config
    from registry_operator.leader import Elector

    async def main() -> None:
        clients = [AsyncClient(KubeConfig.from_file(kubeconfig)) for _ in range(2)]
        configs = [Config(leader_election=True, leader_election_namespace=namespace, identity=f"op-{i}",
                          lease_seconds=3) for i in range(2)]
        first, second = (Elector(c, cfg) for c, cfg in zip(clients, configs, strict=True))
        await first.acquire()
        lost = asyncio.Event()
        holding = asyncio.create_task(first.hold(lost))
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(4)
        assert not waiting.done(), "the second took a Lease that was being renewed"
        holding.cancel()  # the holder stops renewing (a crash)
        started = time.monotonic()
        await asyncio.wait_for(waiting, 10)
        print(f"takeover after the holder stopped: {time.monotonic() - started:.1f}s")
        assert not lost.is_set()
        for c in clients:
            await c.close()

    asyncio.run(main())
    lease = cluster.kubectl("get", "lease", "registry-operator", "-n", namespace, "-o",
                            "jsonpath={.spec.holderIdentity}").stdout
    assert lease == "op-1"


def test_an_image_outside_the_allow_list_creates_nothing(cluster, kube_client, kubeconfig, namespace):
    """REGISTRY_OPERATOR_ALLOWED_IMAGES: who may create a Registry may not run any image they like."""
    cluster.apply(manifest("reg", namespace, {**USERS, "image": "evil.example/registry:3"}))
    allowed = Config(allowed_images=("registry:*", "docker.io/library/registry:*"))

    async def passes(ctx: Context) -> list[Any]:
        return [await reconcile(ctx, namespace, "reg") for _ in range(2)]

    first, second = run(kubeconfig, passes, allowed)
    assert first.written == [] and first.status_written
    assert second.written == [] and not second.status_written  # said once, then nothing
    state = conditions(kube_client, "reg", namespace)
    assert state["Degraded"]["reason"] == "ImageNotAllowed" and "evil.example" in state["Degraded"]["message"]
    assert get(kube_client, "Secret", "reg-ca", namespace) is None


def test_a_refused_pull_secret_is_said_and_not_retried(cluster, kube_client, kubeconfig, namespace):
    """A pull Secret the API server refuses (422) is bad input there: status says so, and no backoff loop
    sends it again (no Retry), unlike a failure that retrying may cure."""
    target = f"{namespace[:50]}-pull"
    cluster.apply(namespace_manifest(target))
    try:
        with refusing_webhook(cluster, target, ["secrets"]) as hook:
            hook.refuse = 422
            wait_until_refused(cluster, target, hook)
            cluster.apply(manifest("reg", namespace, {**USERS, "pullSecrets": {"namespaces": [target]}}))
            outcome = run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))  # raises Retry if retried
            assert outcome.status_written
            pull = conditions(kube_client, "reg", namespace)["PullSecrets"]
            assert pull["status"] == "False" and pull["reason"] == "PullSecretRefused", pull
    finally:
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", target, "--wait=false", check=False)


def _quota(cluster, kube_client, namespace: str, hard: str, wait_for) -> None:
    cluster.apply(f"apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: few, namespace: {namespace}}}\n"
                  f"spec: {{hard: {{{hard}}}}}\n")
    wait_for(lambda: kube_client.get(ResourceQuota, "few", namespace=namespace).status.hard, timeout=30,
             what="the quota controller's status")


def test_a_quota_refusal_is_named_as_one(cluster, kube_client, kubeconfig, namespace, wait_for):
    """A ResourceQuota on Secrets refuses most of a new Registry's Secrets: Degraded QuotaExceeded quoting the
    quota, not "may not write", which sends users hunting for RBAC. The Deployment is not created meanwhile, so no
    pod starts without its material."""
    _quota(cluster, kube_client, namespace, "secrets: '2'", wait_for)
    cluster.apply(manifest("reg", namespace, USERS))

    async def attempt(ctx: Context) -> None:
        with pytest.raises(Retry):
            await reconcile(ctx, namespace, "reg")

    run(kubeconfig, attempt)
    degraded = conditions(kube_client, "reg", namespace)["Degraded"]
    assert degraded["reason"] == "QuotaExceeded", degraded
    assert "a ResourceQuota refuses it: exceeded quota: few" in degraded["message"], degraded
    assert "may not write" not in degraded["message"]
    assert get(kube_client, "Deployment", "reg", namespace) is None
    assert get(kube_client, "ConfigMap", "reg-config", namespace) is not None

    cluster.kubectl("delete", "resourcequota", "few", "-n", namespace)
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))  # the quota gone: no Retry
    assert conditions(kube_client, "reg", namespace)["Degraded"]["reason"] != "QuotaExceeded"


def test_failures_alike_write_no_status_whatever_order_they_answer_in(cluster, kube_client, kubeconfig, namespace,
                                                                       wait_for):
    """Several of a Registry's writes refused at once (a quota on Secrets) answer in any order: retries that fail
    alike change neither status nor the retry message (which the coalescer logs again only when it changes)."""
    _quota(cluster, kube_client, namespace, "secrets: '2'", wait_for)
    cluster.apply(manifest("reg", namespace, USERS))

    async def attempts(ctx: Context) -> tuple[set[str], set[str]]:
        errors, versions = set(), set()
        for attempt in range(6):
            with pytest.raises(Retry) as err:
                await reconcile(ctx, namespace, "reg")
            if attempt:  # the first pass stores what the quota admits and writes the status
                errors.add(str(err.value))
                versions.add(registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"])
        return errors, versions

    errors, versions = run(kubeconfig, attempts)
    assert len(errors) == 1 and len(versions) == 1, (errors, versions)


def test_a_port_added_by_hand_is_left_alone_and_costs_no_write(cluster, kube_client, kubeconfig, namespace):
    """Server-side apply keeps a port another manager added to our Service, so applying again changes nothing:
    the Service counts as current (ours restored if edited, the extra one tolerated) and is not re-sent."""
    from registry_operator import metrics

    def service_applies() -> float:
        return metrics.API_WRITES.labels("Service", "apply")._value.get()

    cluster.apply(manifest("reg", namespace, USERS))
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    cluster.kubectl("patch", "service", "reg", "-n", namespace, "-p",
                    '{"spec": {"ports": [{"name": "extra", "port": 6000, "targetPort": 5000}]}}')
    before = service_applies()
    run(kubeconfig, lambda ctx: reconcile(ctx, namespace, "reg"))
    assert service_applies() == before
    ports = {p["name"]: p["port"] for p in get(kube_client, "Service", "reg", namespace)["spec"]["ports"]}
    assert ports == {"extra": 6000, "registry": 5000}

