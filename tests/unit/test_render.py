"""Rendering: the children of a Registry, their hardening, and the 2.8 / 3.x differences."""

import json

import yaml
from builders import OWNER, by_key, decode_secrets

from registry_operator import names, render
from registry_operator.render import config

USERS = {"auth": {"users": [{"name": "alice"}]}}


def test_default_registry_children(pipeline):
    _, _, objects = pipeline.run(USERS)
    kinds = sorted(by_key(objects))
    assert kinds == sorted([
        ("Secret", "reg-http-secret"), ("Secret", "reg-htpasswd"), ("Secret", "reg-passwords"),
        ("Secret", "reg-ca"), ("Secret", "reg-ca-key"), ("Secret", "reg-tls"),
        ("ConfigMap", "reg-config"), ("ConfigMap", "reg-ca"), ("Deployment", "reg"), ("Service", "reg"),
        ("NetworkPolicy", "reg"),
    ])
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY
        assert meta["labels"][names.LABEL_INSTANCE] == "reg"
        ref = meta["ownerReferences"][0]
        assert ref["controller"] and ref["uid"] == "0000-1111" and ref["kind"] == "Registry"


def test_rendering_is_deterministic_once_material_exists(pipeline):
    _, _, first = pipeline.run(USERS)
    _, _, second = pipeline.run(USERS, decode_secrets(first))
    assert first == second


def test_pod_is_hardened(pipeline):
    _, _, objects = pipeline.run(USERS)
    pod = by_key(objects)[("Deployment", "reg")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"  # no chown walk over every blob
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert pod["terminationGracePeriodSeconds"] > config.DRAIN_SECONDS


def test_htpasswd_is_a_directory_mount_outside_the_restart_hash(pipeline):
    _, _, objects = pipeline.run(USERS)
    deployment = by_key(objects)[("Deployment", "reg")]
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "subPath" not in mounts["auth"] and mounts["auth"]["mountPath"] == config.AUTH_DIR
    before = deployment["spec"]["template"]["metadata"]["annotations"][names.POD_INPUTS_HASH]
    _, _, more = pipeline.run({"auth": {"users": [{"name": "alice"}, {"name": "bob"}]}}, decode_secrets(objects))
    after = by_key(more)[("Deployment", "reg")]["spec"]["template"]["metadata"]["annotations"]
    assert after[names.POD_INPUTS_HASH] == before
    assert by_key(more)[("Secret", "reg-htpasswd")] != by_key(objects)[("Secret", "reg-htpasswd")]


def test_a_new_certificate_rolls_the_pods(pipeline):
    _, _, objects = pipeline.run(USERS)
    observed = decode_secrets(objects)
    del observed["reg-tls"]
    _, _, renewed = pipeline.run(USERS, observed)
    hashes = [by_key(o)[("Deployment", "reg")]["spec"]["template"]["metadata"]["annotations"][names.POD_INPUTS_HASH]
              for o in (objects, renewed)]
    assert hashes[0] != hashes[1]


def test_service_exposes_only_the_registry_port(pipeline):
    _, _, objects = pipeline.run({**USERS, "service": {"type": "NodePort", "port": 443, "nodePort": 30443}})
    service = by_key(objects)[("Service", "reg")]
    assert service["spec"]["ports"] == [
        {"name": "registry", "port": 443, "targetPort": "registry", "protocol": "TCP", "nodePort": 30443}
    ]
    assert service["spec"]["type"] == "NodePort"


def _config(objects):
    return yaml.safe_load(by_key(objects)[("ConfigMap", "reg-config")]["data"]["config.yml"])


def test_config_is_complete_and_differs_by_version(pipeline):
    _, _, v3 = pipeline.run(USERS)
    _, _, v28 = pipeline.run({**USERS, "version": "2.8"})
    c3, c28 = _config(v3), _config(v28)
    for c in (c3, c28):
        assert c["http"]["tls"] == {"certificate": "/etc/registry/tls/tls.crt", "key": "/etc/registry/tls/tls.key",
                                    "minimumtls": "tls1.2"}
        assert c["auth"] == {"htpasswd": {"realm": "reg", "path": "/etc/registry/auth/htpasswd"}}
        assert c["http"]["debug"]["addr"] == "127.0.0.1:5001"  # pprof shares it: never reachable unscraped
        assert "secret" not in c["http"]  # from a Secret, through the environment
        assert c["storage"]["delete"] == {"enabled": False}
    d3 = by_key(v3)[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]
    d28 = by_key(v28)[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]
    assert d3["image"].startswith("registry:3.") and d28["image"].startswith("registry:2.8.")
    assert d3["args"] == ["serve", "/etc/distribution/config.yml"]
    assert d28["args"] == ["serve", "/etc/docker/registry/config.yml"]
    assert {"name": "OTEL_TRACES_EXPORTER", "value": "none"} in d3["env"]
    assert all(e["name"] != "OTEL_TRACES_EXPORTER" for e in d28["env"])


def test_tls_disabled_and_no_auth(pipeline):
    _, _, objects = pipeline.run({"tls": {"mode": "Disabled"}, "auth": {"mode": "none"}})
    c = _config(objects)
    assert "tls" not in c["http"] and "auth" not in c
    keys = by_key(objects)
    assert ("Secret", "reg-tls") not in keys and ("Secret", "reg-htpasswd") not in keys
    probe = keys[("Deployment", "reg")]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["scheme"] == "HTTP"


def test_persistent_claim_is_kept_by_default_and_uses_recreate(pipeline):
    raw = {**USERS, "storage": {"persistentVolumeClaim": {"size": "5Gi"}}}
    _, _, objects = pipeline.run(raw)
    claim = by_key(objects)[("PersistentVolumeClaim", "reg-data")]
    assert "ownerReferences" not in claim["metadata"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert by_key(objects)[("Deployment", "reg")]["spec"]["strategy"] == {"type": "Recreate"}
    raw["storage"]["persistentVolumeClaim"]["reclaimPolicy"] = "Delete"
    _, _, objects = pipeline.run(raw)
    assert by_key(objects)[("PersistentVolumeClaim", "reg-data")]["metadata"]["ownerReferences"]


def test_replicas_need_a_shared_claim(pipeline):
    rwo = {**USERS, "replicas": 3, "storage": {"persistentVolumeClaim": {}}}
    _, _, objects = pipeline.run(rwo)
    assert by_key(objects)[("Deployment", "reg")]["spec"]["replicas"] == 1
    rwx = {**USERS, "replicas": 3, "storage": {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"]}}}
    _, _, objects = pipeline.run(rwx)
    deployment = by_key(objects)[("Deployment", "reg")]["spec"]
    assert deployment["replicas"] == 3 and deployment["strategy"]["type"] == "RollingUpdate"


def test_token_mode_renders_the_token_service(pipeline):
    raw = {"auth": {"mode": "token", "users": [{"name": "alice"}],
                    "access": [{"users": ["alice"], "repositories": ["team-a/*"], "actions": ["pull", "push"]}]}}
    _, _, objects = pipeline.run(raw)
    keys = by_key(objects)
    assert {("Deployment", "reg-token"), ("Service", "reg-token"), ("ConfigMap", "reg-token"),
            ("Secret", "reg-token-signing"), ("Secret", "reg-token-tls")} <= set(keys)
    token = _config(objects)["auth"]["token"]
    assert token["realm"] == "https://reg-token.ns.svc:5001/token"
    assert token["rootcertbundle"] == "/etc/registry/token/ca.crt"
    token_pod = keys[("Deployment", "reg-token")]["spec"]["template"]["spec"]
    assert token_pod["containers"][0]["image"] == "registry-operator:test"
    assert token_pod["automountServiceAccountToken"] is False


def test_service_accounts_make_the_token_pod_read_the_cluster_keys(pipeline):
    """A rule naming ServiceAccounts gives the token service the realm as their audience and the pod its own
    token (to read the cluster's keys); without such a rule, neither."""
    rules = [{"serviceAccounts": ["ci/builder", "ci/*"], "repositories": ["app/*"], "actions": ["pull"]},
             {"users": ["alice"], "repositories": ["*"], "actions": ["*"]}]
    raw = {"auth": {"mode": "token", "users": [{"name": "alice"}], "access": rules}}
    _, _, objects = pipeline.run(raw)
    document = json.loads(by_key(objects)[("ConfigMap", "reg-token")]["data"]["config.json"])
    assert document["serviceAccountAudience"] == "https://reg-token.ns.svc:5001/token"
    assert document["access"][0]["serviceAccounts"] == ["ci/builder", "ci/*"]
    assert "serviceAccounts" not in document["access"][1]
    pod = by_key(objects)[("Deployment", "reg-token")]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True and "serviceAccountName" not in pod
    realm = "https://registry.example.com/token"
    _, _, objects = pipeline.run({"auth": {**raw["auth"], "tokenRealm": realm}})
    assert json.loads(by_key(objects)[("ConfigMap", "reg-token")]["data"]["config.json"])[
        "serviceAccountAudience"] == realm  # fmt: skip
    _, _, objects = pipeline.run({"auth": {**raw["auth"], "access": rules[1:]}})
    assert "serviceAccountAudience" not in by_key(objects)[("ConfigMap", "reg-token")]["data"]["config.json"]
    assert by_key(objects)[("Deployment", "reg-token")]["spec"]["template"]["spec"][
        "automountServiceAccountToken"] is False  # fmt: skip


def test_network_policies_open_only_the_serving_ports(pipeline):
    _, _, objects = pipeline.run({"auth": {"mode": "token", "users": [{"name": "alice"}]}})
    keys = by_key(objects)
    registry, token = keys[("NetworkPolicy", "reg")]["spec"], keys[("NetworkPolicy", "reg-token")]["spec"]
    pod_labels = keys[("Deployment", "reg")]["spec"]["template"]["metadata"]["labels"]
    assert registry["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert registry["policyTypes"] == ["Ingress"]
    assert registry["ingress"] == [{"ports": [{"protocol": "TCP", "port": config.PORT}]}]  # any source, one port
    assert token["ingress"][0]["ports"][0]["port"] == 5001
    assert token["podSelector"]["matchLabels"][names.LABEL_COMPONENT] == names.COMPONENT_TOKEN


def test_network_policy_peers_and_disabling(pipeline):
    peer = {"namespaceSelector": {"matchLabels": {"team": "a"}}}
    _, _, objects = pipeline.run({**USERS, "networkPolicy": {"from": [peer]}})
    assert by_key(objects)[("NetworkPolicy", "reg")]["spec"]["ingress"][0]["from"] == [peer]
    spec, _, objects = pipeline.run({**USERS, "networkPolicy": {"enabled": False}})
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert ("networking.k8s.io/v1", "NetworkPolicy", "reg") in render.obsolete(spec)


def test_pod_monitor_scrapes_the_registry_and_token_pods_metrics_ports_only_when_asked(pipeline):
    s, mat, objects = pipeline.run(USERS)
    assert "PodMonitor" not in {o["kind"] for o in objects}  # no prometheus-operator: nothing to render
    token = {"auth": {"mode": "token", "users": [{"name": "alice"}],
                      "access": [{"users": ["alice"], "repositories": ["*"], "actions": ["pull"]}]}}
    s, mat, _ = pipeline.run(token)
    monitored = by_key(render.desired(s, mat, OWNER, "img", pod_monitor=True))
    monitor = monitored[("PodMonitor", "reg")]
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == OWNER["metadata"]["uid"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {}
    for deployment in ("reg", "reg-token"):
        pod = monitored[("Deployment", deployment)]["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        scraped |= {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    ports = {e["port"]: scraped[e["port"]] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert ports == {"debug": 5001, "metrics": 5002}  # the registry's debug listener, the token service's metrics
    assert int(_config([monitored[("ConfigMap", "reg-config")]])["http"]["debug"]["addr"].lstrip(":")) == 5001
    services = [o for o in monitored.values() if o["kind"] == "Service"]
    assert all(p["targetPort"] not in ports for svc in services for p in svc["spec"]["ports"])


def test_network_policies_admit_only_prometheus_to_the_metrics_ports_of_a_monitored_registry(pipeline):
    token = {"auth": {"mode": "token", "users": [{"name": "alice"}],
                      "access": [{"users": ["alice"], "repositories": ["*"], "actions": ["pull"]}]},
             "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}}
    s, mat, _ = pipeline.run(token)
    monitored = by_key(render.desired(s, mat, OWNER, "img", pod_monitor=True))
    for name, serving, metrics_port in (("reg", 5000, 5001), ("reg-token", 5001, 5002)):
        serve, scrape = monitored[("NetworkPolicy", name)]["spec"]["ingress"]
        assert serve["ports"] == [{"protocol": "TCP", "port": serving}]
        assert serve["from"] == token["networkPolicy"]["from"]  # the user's peers: for the serving port only
        assert scrape["ports"] == [{"protocol": "TCP", "port": metrics_port}]
        prometheus = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/managed-by": "prometheus-operator"}
        assert scrape["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": prometheus}}]


def test_the_debug_listener_is_reachable_only_when_scraped(pipeline):
    s, mat, _ = pipeline.run(USERS)
    assert _config(render.desired(s, mat, OWNER, "img", pod_monitor=True))["http"]["debug"]["addr"] == ":5001"


def test_more_than_one_replica_gets_budgets_and_two_token_pods(pipeline):
    shared = {"replicas": 3, "storage": {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"]}},
              "auth": {"mode": "token", "users": [{"name": "alice"}]}}
    spec, _, objects = pipeline.run(shared)
    keys = by_key(objects)
    assert keys[("Deployment", "reg-token")]["spec"]["replicas"] == 2
    for name, component in (("reg", names.COMPONENT_REGISTRY), ("reg-token", names.COMPONENT_TOKEN)):
        budget = keys[("PodDisruptionBudget", name)]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"][names.LABEL_COMPONENT] == component
    single, _, objects = pipeline.run({**shared, "replicas": 1})
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert by_key(objects)[("Deployment", "reg-token")]["spec"]["replicas"] == 1
    assert {("policy/v1", "PodDisruptionBudget", n) for n in ("reg", "reg-token")} <= set(render.obsolete(single))


def test_replicas_spread_over_nodes_without_ever_waiting_for_one(pipeline):
    shared = {"replicas": 2, "storage": {"persistentVolumeClaim": {"accessModes": ["ReadWriteMany"]}},
              "auth": {"mode": "token", "users": [{"name": "alice"}]}}
    _, _, objects = pipeline.run(shared)
    for name, component in (("reg", names.COMPONENT_REGISTRY), ("reg-token", names.COMPONENT_TOKEN)):
        [rule] = by_key(objects)[("Deployment", name)]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert rule["topologyKey"] == "kubernetes.io/hostname" and rule["maxSkew"] == 1
        assert rule["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-node cluster still runs every replica
        assert rule["labelSelector"]["matchLabels"] == names.selector("reg", component)
    _, _, objects = pipeline.run({**shared, "replicas": 1})
    assert not any("topologySpreadConstraints" in by_key(objects)[("Deployment", n)]["spec"]["template"]["spec"]
                   for n in ("reg", "reg-token"))
