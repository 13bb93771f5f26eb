"""Referenced Secrets are noticed without watching every Secret: at once when labelled, by polling otherwise."""

from __future__ import annotations

import base64
import time

from registries import get, is_ready, manifest, registry

USERS = {"auth": {"users": [{"name": "bob", "passwordSecretRef": {"name": "bob-pw"}}]}}


def password_secret(namespace: str, password: str, labelled: bool) -> str:
    labels = "  labels: {registry.operator.dev/watch: 'true'}\n" if labelled else ""
    data = base64.b64encode(password.encode()).decode()
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: bob-pw\n  namespace: {namespace}\n{labels}"
            f"data:\n  password: {data}\n")


def htpasswd_line(client, namespace: str) -> str:
    return base64.b64decode(get(client, "Secret", "reg-htpasswd", namespace)["data"]["htpasswd"]).decode()


def test_changes_of_referenced_secrets_arrive_within_the_poll_or_at_once(
    cluster, kube_client, namespace, operator_factory, wait_for
):
    operator_factory(args=["--namespace", namespace], env={"REGISTRY_OPERATOR_REFERENCE_POLL_SECONDS": "2"})
    cluster.apply(password_secret(namespace, "first-password", labelled=False))
    cluster.apply(manifest("reg", namespace, USERS))
    wait_for(lambda: is_ready(kube_client, "reg", namespace), timeout=60, what="Registry Ready")
    assert registry(kube_client, "reg", namespace)["status"]["unwatchedSecrets"] == ["bob-pw"]

    for labelled, bound in ((False, 2 + 3), (True, 2)):
        before = htpasswd_line(kube_client, namespace)
        started = time.monotonic()
        cluster.apply(password_secret(namespace, f"password-{labelled}", labelled))
        wait_for(lambda old=before: htpasswd_line(kube_client, namespace) != old, timeout=30, what="htpasswd updated")
        took = time.monotonic() - started
        print(f"{'labelled' if labelled else 'unlabelled'} Secret change reached the htpasswd Secret in {took:.2f}s")
        assert took < bound
    wait_for(lambda: "unwatchedSecrets" not in registry(kube_client, "reg", namespace)["status"], timeout=10,
             what="status no longer names the labelled Secret")
