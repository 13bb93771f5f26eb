"""spec.pullSecrets on a real API server: Secrets and imagePullSecrets entries in selected namespaces (by name,
by label, created later), none in others, others' entries kept, cleanup on deselection and on deletion, and no
writes at rest. The operator runs under its own RBAC (manifests/), so a missing permission fails here."""

from __future__ import annotations

import base64
import json
import secrets
import time

from lightkube import ApiError
from lightkube.resources.core_v1 import Secret, ServiceAccount
from lightkube.types import PatchType
from registries import condition, manifest, registry


def make_namespace(cluster, name: str, labels: dict[str, str] | None = None) -> None:
    label_yaml = "".join(f"\n    {k}: '{v}'" for k, v in (labels or {}).items())
    cluster.apply(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
                  + (f"  labels:{label_yaml}\n" if labels else ""))


def wait_default_sa(cluster, wait_for, name: str) -> None:
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
             timeout=30, what=f"ServiceAccount default in {name}")


def pull_secret(client, namespace: str, name: str) -> dict | None:
    try:
        return client.get(Secret, name, namespace=namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def entries(client, namespace: str, account: str = "default") -> list[str]:
    sa = client.get(ServiceAccount, account, namespace=namespace)
    return [e.name for e in sa.imagePullSecrets or ()]


def test_pull_secrets_follow_the_selection_and_leave_others_alone(
    cluster, kube_client, namespace, operator_factory, operator_rbac_kubeconfig, wait_for
):
    tag = secrets.token_hex(3)
    labelled, named, unselected, later = (f"t-pull-{kind}-{tag}" for kind in ("lab", "named", "none", "later"))
    selector = {"pull-test": tag}
    make_namespace(cluster, labelled, selector)
    make_namespace(cluster, named)
    make_namespace(cluster, unselected)
    try:
        for ns in (labelled, named, unselected):
            wait_default_sa(cluster, wait_for, ns)
        # Someone else's entry, which must survive everything below.
        kube_client.patch(ServiceAccount, "default", {"imagePullSecrets": [{"name": "foreign"}]},
                          namespace=labelled, patch_type=PatchType.MERGE)
        op = operator_factory(kubeconfig=operator_rbac_kubeconfig)
        name = f"reg.{namespace}-pull"
        spec = {"auth": {"users": [{"name": "alice"}]},
                "pullSecrets": {"namespaces": [named], "namespaceSelector": {"matchLabels": selector},
                                "serviceAccounts": ["default", "builder"]}}
        cluster.apply(manifest("reg", namespace, spec))

        # builder exists nowhere yet: said once in the condition, no loop.
        wait_for(lambda: (condition(kube_client, "reg", namespace, "PullSecrets") or {}).get("reason")
                 == "ServiceAccountNotFound", timeout=60, what="PullSecrets waits for builder")
        for ns in (labelled, named):
            obj = pull_secret(kube_client, ns, name)
            assert obj and obj["type"] == "kubernetes.io/dockerconfigjson" and set(obj["data"]) == {
                ".dockerconfigjson", "ca.crt"}
            auths = json.loads(base64.b64decode(obj["data"][".dockerconfigjson"]))["auths"]
            assert f"reg.{namespace}.svc:5000" in auths and f"reg.{namespace}.svc.cluster.local:5000" in auths
        assert entries(kube_client, labelled) == ["foreign", name] and entries(kube_client, named) == [name]
        assert pull_secret(kube_client, unselected, name) is None and entries(kube_client, unselected) == []
        status = registry(kube_client, "reg", namespace)["status"]
        assert status["pullSecrets"] == {"secretName": name, "count": 2, "namespaces": sorted([labelled, named])}
        wide = cluster.kubectl("get", "registry", "reg", "-n", namespace, "-o", "wide").stdout.splitlines()
        assert wide[1][wide[0].index("PULL-SECRETS"):].split()[0] == "2"  # by offset: other columns may be empty
        finalizers = registry(kube_client, "reg", namespace)["metadata"]["finalizers"]
        assert finalizers == ["registry.operator.dev/pull-secrets"]

        # A ServiceAccount that appears gets the entry; then the condition is True.
        for ns in (labelled, named):
            cluster.apply(f"apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: builder\n  namespace: {ns}\n")
        wait_for(lambda: (condition(kube_client, "reg", namespace, "PullSecrets") or {}).get("status") == "True",
                 timeout=30, what="PullSecrets True once builder exists")
        assert entries(kube_client, labelled, "builder") == [name]

        # A namespace created later gets the Secret and the entry within seconds.
        started = time.monotonic()
        make_namespace(cluster, later, selector)
        wait_for(lambda: name in entries(kube_client, later), timeout=30, what="entry in the later namespace")
        took = time.monotonic() - started
        print(f"namespace created -> pull Secret and imagePullSecrets entry: {took:.2f}s")
        assert pull_secret(kube_client, later, name) is not None and took < 10

        # At rest: a restart reconciles everything again and writes nothing anywhere.
        wait_for(lambda: (registry(kube_client, "reg", namespace)["status"].get("pullSecrets") or {}).get("count")
                 == 3, timeout=30, what="status counts 3 namespaces")
        time.sleep(2)
        versions = {ns: (pull_secret(kube_client, ns, name)["metadata"]["resourceVersion"],
                         kube_client.get(ServiceAccount, "default", namespace=ns).metadata.resourceVersion)
                    for ns in (labelled, named, later)}
        registry_rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
        op.stop()
        op = operator_factory(kubeconfig=operator_rbac_kubeconfig, args=["--all-namespaces", "--log-level", "DEBUG"])
        op.wait_for_log(rf"Registry {namespace}/reg reconciled: 0 applied", timeout=30)
        time.sleep(1)
        assert versions == {ns: (pull_secret(kube_client, ns, name)["metadata"]["resourceVersion"],
                                 kube_client.get(ServiceAccount, "default", namespace=ns).metadata.resourceVersion)
                            for ns in (labelled, named, later)}
        assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == registry_rv
        assert "pull Secrets:" not in op.log()

        # A copy deleted by hand comes back (its watch label brings the event to its Registry).
        kube_client.delete(Secret, name, namespace=named)
        wait_for(lambda: pull_secret(kube_client, named, name) is not None, timeout=15, what="copy restored")

        # Deselected by label: our Secret and entries go, the foreign entry stays.
        cluster.kubectl("label", "namespace", labelled, "pull-test-")
        wait_for(lambda: pull_secret(kube_client, labelled, name) is None, timeout=30, what="Secret removed")
        assert entries(kube_client, labelled) == ["foreign"] and entries(kube_client, labelled, "builder") == []

        # Deleting the Registry removes what is left, then the finalizer lets it go.
        password = json.loads(base64.b64decode(pull_secret(kube_client, named, name)["data"][".dockerconfigjson"]))
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--wait=false")
        wait_for(lambda: cluster.kubectl("get", "registry", "reg", "-n", namespace, check=False).returncode != 0,
                 timeout=30, what="Registry gone")
        for ns in (named, later):
            assert pull_secret(kube_client, ns, name) is None and entries(kube_client, ns) == []
        assert entries(kube_client, labelled) == ["foreign"]
        robot = next(iter(password["auths"].values()))["auth"]
        assert base64.b64decode(robot).decode().split(":", 1)[1] not in op.log()
    finally:  # the operator still runs: its finalizer lets the Registry go, so its namespace can go too
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--ignore-not-found", "--timeout=30s",
                        check=False)
        for ns in (labelled, named, unselected, later):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_a_selector_matching_nothing_is_said_once(cluster, kube_client, namespace, operator, wait_for):
    spec = {"auth": {"users": [{"name": "alice"}]},
            "pullSecrets": {"namespaceSelector": {"matchLabels": {"nothing-has": secrets.token_hex(4)}}}}
    cluster.apply(manifest("reg", namespace, spec))
    wait_for(lambda: (condition(kube_client, "reg", namespace, "PullSecrets") or {}).get("reason")
             == "NoNamespaceSelected", timeout=60, what="NoNamespaceSelected")
    time.sleep(3)
    rv = registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"]
    time.sleep(3)
    assert registry(kube_client, "reg", namespace)["metadata"]["resourceVersion"] == rv
    assert operator.log().count("NoNamespaceSelected") == 1
    cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--timeout=30s")  # the finalizer lets go


def test_rotation_on_demand_keeps_every_copy_valid(cluster, kube_client, namespace, operator_factory, wait_for):
    """The annotation starts a rotation: the new robot is in htpasswd for the propagation time before the copy
    gets it, and the old one leaves htpasswd only after the copy changed. Sampled throughout: the copy's user is
    always one htpasswd holds (htpasswd read first, so a sample can only be older there than the copy)."""
    propagation = 3.0
    operator_factory(env={"REGISTRY_OPERATOR_PULL_ROTATION_SECONDS": str(propagation)})
    workload = f"t-pull-rot-{secrets.token_hex(3)}"
    make_namespace(cluster, workload)
    name = f"reg.{namespace}-pull"
    try:
        cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]},
                                                  "pullSecrets": {"namespaces": [workload]}}))

        def sample() -> tuple[set[str], str, str]:
            data = kube_client.get(Secret, "reg-htpasswd", namespace=namespace).data
            users = {line.split(":")[0] for line in base64.b64decode(data["htpasswd"]).decode().splitlines()}
            copy = pull_secret(kube_client, workload, name)
            auths = json.loads(base64.b64decode(copy["data"][".dockerconfigjson"]))["auths"] if copy else {}
            user, _, password = base64.b64decode(next(iter(auths.values()))["auth"]).decode().partition(":") \
                if auths else ("", "", "")
            return users, user, password

        wait_for(lambda: sample()[1] == "robot$pull", timeout=60, what="first copy")
        _, _, old_password = sample()
        cluster.kubectl("annotate", "registry", "reg", "-n", namespace,
                        "registry.operator.dev/rotate-pull-credential=1")
        samples = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            users, user, password = sample()
            samples.append((time.monotonic(), users, user))
            assert user in users, f"copy carries {user}, htpasswd has {sorted(users)}"
            if users == {"alice", "robot$pull2"} and user == "robot$pull2":
                break
            time.sleep(0.05)
        assert samples[-1][1:] == ({"alice", "robot$pull2"}, "robot$pull2"), samples[-1]
        both = [t for t, users, user in samples if user == "robot$pull" and "robot$pull2" in users]
        switched = next(t for t, _, user in samples if user == "robot$pull2")
        print(f"rotation: both valid for {switched - both[0]:.2f}s before the copy switched, "
              f"old one gone {samples[-1][0] - switched:.2f}s after")
        assert switched - both[0] >= propagation - 0.5
        assert sample()[2] != old_password
    finally:
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--ignore-not-found", "--timeout=30s",
                        check=False)
        cluster.kubectl("delete", "namespace", workload, "--wait=false", "--ignore-not-found", check=False)


def test_the_namespaced_install_says_pull_secrets_need_the_cluster_wide_one(
    cluster, kube_client, namespace, operator_factory, tmp_path, wait_for
):
    """Without the right to list namespaces: a condition, no finalizer, no retries, and no 403 from a watch."""
    from test_namespaced import PERMISSION_WORDS, namespaced_install

    sa_namespace, sa = cluster.apply_rbac(namespaced_install(tmp_path, namespace))
    kubeconfig = cluster.token_kubeconfig(tmp_path / "kubeconfig", sa_namespace, sa)
    op = operator_factory(kubeconfig=kubeconfig, args=["--namespace", namespace])
    cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]},
                                              "pullSecrets": {"namespaces": ["default"]}}))
    wait_for(lambda: (condition(kube_client, "reg", namespace, "PullSecrets") or {}).get("reason")
             == "PullSecretsForbidden", timeout=60, what="PullSecretsForbidden")
    time.sleep(3)
    body = registry(kube_client, "reg", namespace)
    assert not body["metadata"].get("finalizers")
    assert condition(kube_client, "reg", namespace, "Ready")["status"] == "True"
    said = [line for line in op.log().splitlines() if any(w in line for w in PERMISSION_WORDS)]
    assert len(said) == 1 and "PullSecretsForbidden" in said[0], said  # the condition's one line, no 403s
    assert "retrying" not in op.log()


def test_namespaces_outside_the_operator_setting_get_nothing(cluster, kube_client, namespace, operator_factory,
                                                             wait_for):
    tag = secrets.token_hex(3)
    allowed, refused = f"t-pull-ok-{tag}", f"t-pull-no-{tag}"
    for ns in (allowed, refused):
        make_namespace(cluster, ns)
    try:
        operator_factory(env={"REGISTRY_OPERATOR_PULL_SECRET_NAMESPACES": "t-pull-ok-*"})
        cluster.apply(manifest("reg", namespace, {"auth": {"users": [{"name": "alice"}]},
                                                  "pullSecrets": {"namespaces": [allowed, refused]}}))
        wait_for(lambda: (condition(kube_client, "reg", namespace, "PullSecrets") or {}).get("reason")
                 == "NamespaceNotAllowed", timeout=60, what="NamespaceNotAllowed")
        name = f"reg.{namespace}-pull"
        wait_for(lambda: pull_secret(kube_client, allowed, name), timeout=30, what="Secret in the allowed namespace")
        assert pull_secret(kube_client, refused, name) is None
        assert refused in condition(kube_client, "reg", namespace, "PullSecrets")["message"]
    finally:
        cluster.kubectl("delete", "registry", "reg", "-n", namespace, "--ignore-not-found", "--timeout=30s",
                        check=False)
        for ns in (allowed, refused):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_registries_sharing_an_account_add_and_remove_every_entry(cluster, kube_client, namespace, operator,
                                                                   wait_for):
    """Six Registries created and deleted at once, all with an entry in one ServiceAccount: their JSON patches
    race, and one that finds the account changed since it read it (422) reads it again instead of taking that
    for a refusal, so no entry is missing after creation and none is left pointing at a deleted Secret."""
    target = f"t-pull-race-{secrets.token_hex(3)}"
    make_namespace(cluster, target)
    try:
        wait_default_sa(cluster, wait_for, target)
        names = [f"r{i}" for i in range(6)]
        spec = {"auth": {"users": [{"name": "alice"}]}, "pullSecrets": {"namespaces": [target]}}
        cluster.apply("---\n".join(manifest(n, namespace, spec) for n in names))
        want = sorted(f"{n}.{namespace}-pull" for n in names)
        wait_for(lambda: sorted(entries(kube_client, target)) == want, timeout=60, what="every entry")
        cluster.kubectl("delete", "registry", *names, "-n", namespace, "--timeout=60s")
        assert entries(kube_client, target) == []
        assert all(pull_secret(kube_client, target, name) is None for name in want)
        assert "PullSecretRefused" not in operator.log()
    finally:
        cluster.kubectl("delete", "registry", "--all", "-n", namespace, "--timeout=30s", check=False)
        cluster.kubectl("delete", "namespace", target, "--wait=false", "--ignore-not-found", check=False)
