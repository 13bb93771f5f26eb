"""Node trust (spec.nodeTrust): which hosts are published, the ConfigMap, the condition, and the node agent's
pure plan (ConfigMaps -> certs.d files) and its writes into a temporary directory."""

import datetime as dt
import os
import re
from pathlib import Path

import yaml
from cryptography import x509

from registry_operator import conditions, material, pki, spec
from registry_operator.config import Config, load
from registry_operator.names import APPLIED_HASH, LABEL_NODE_TRUST_OF, NODE_AGENT
from registry_operator.nodetrust import DATA_CA, DATA_HOSTS, DATA_MIRROR_OF, files, publish
from registry_operator.nodetrust.agent import Agent

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NODE_PORT = {"type": "NodePort"}
SERVICE = {"spec": {"ports": [{"port": 5000, "nodePort": 31234}]}}
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_spec_opts_in():
    assert not spec.parse("reg", "ns", {}).node_trust
    assert spec.parse("reg", "ns", {"nodeTrust": {"enabled": True}}).node_trust


def test_hosts_use_the_allocated_node_port_and_leave_wildcards_and_unreachable_ports_out():
    s = spec.parse("reg", "ns", {"service": NODE_PORT,
                                 "tls": {"ipAddresses": ["10.250.0.1"], "dnsNames": ["*.corp", "reg.corp"]}})
    assert publish.hosts(s, "cluster.local", SERVICE) == [
        "reg.ns.svc:5000", "reg.ns.svc.cluster.local:5000", "reg.corp:31234", "10.250.0.1:31234"]
    balanced = spec.parse("reg", "ns", {"service": {"type": "LoadBalancer"}, "tls": {"ipAddresses": ["10.9.9.9"]}})
    assert publish.hosts(balanced, "cluster.local", SERVICE)[2:] == ["10.9.9.9:5000", "10.9.9.9:31234"]
    cluster_ip = spec.parse("reg", "ns", {"tls": {"ipAddresses": ["10.250.0.1"]}})
    assert publish.hosts(cluster_ip, "cluster.local", SERVICE)[2:] == ["10.250.0.1:5000"]


def test_every_published_host_is_in_the_server_certificate():
    """What nodes are told to trust must verify: each host is a SAN of the certificate material issues."""
    s = spec.parse("reg", "ns", {"service": NODE_PORT, "auth": {"mode": "none"},
                                 "tls": {"ipAddresses": ["10.250.0.1"], "dnsNames": ["reg.corp"]}})
    mat = material.decide(s, {})
    [cert, *_] = pki.load_chain(mat.serving_cert_pem)
    sans = pki.sans(cert)
    for host in publish.hosts(s, "cluster.local", SERVICE):
        assert host.rsplit(":", 1)[0] in sans, host
    assert x509.load_pem_x509_certificate(mat.client_ca_pem)  # the CA the ConfigMap carries


def test_config_map_is_labelled_with_the_uid_and_carries_ca_and_hosts():
    s = spec.parse("reg", "ns", {"nodeTrust": {"enabled": True}})
    cm = publish.config_map(s, "uid-1", "agents", CA, ["a:1", "b:2"])
    assert cm["metadata"]["name"] == "reg.ns-node-trust" and cm["metadata"]["namespace"] == "agents"
    assert cm["metadata"]["labels"][LABEL_NODE_TRUST_OF] == "uid-1"
    assert "ownerReferences" not in cm["metadata"]  # another namespace: the finalizer cleans up
    assert cm["data"] == {DATA_HOSTS: "a:1\nb:2\n", DATA_CA: CA.decode()}
    rotated = publish.config_map(s, "uid-1", "agents", CA + CA, ["a:1", "b:2"])
    assert rotated["metadata"]["annotations"][APPLIED_HASH] != cm["metadata"]["annotations"][APPLIED_HASH]


def test_agent_problem_names_a_missing_or_unready_daemonset():
    assert publish.agent_problem(None, "agents").reason == "NodeAgentNotInstalled"
    assert NODE_AGENT in publish.agent_problem(None, "agents").message
    assert publish.agent_problem({"status": {"numberReady": 0}}, "agents").reason == "NodeAgentNotReady"
    assert publish.agent_problem({"status": {"numberReady": 2}}, "agents") is None
    assert publish.Published(problems=[publish.agent_problem(None, "x")]).recheck
    assert not publish.Published().recheck


def _status(node_problems, published=None):
    s = spec.parse("reg", "ns", {"nodeTrust": {"enabled": True}})
    return conditions.compute(s, 1, [], {}, published or {}, None, NOW, node_problems=node_problems)


def test_node_trust_condition_and_its_warning():
    ok = _status([], {"nodeTrust": {"hosts": ["a:1", "b:2"]}})
    [cond] = [c for c in ok["conditions"] if c["type"] == "NodeTrust"]
    assert (cond["status"], cond["reason"]) == ("True", "Published")
    bad = _status([publish.agent_problem(None, "agents")])
    [cond] = [c for c in bad["conditions"] if c["type"] == "NodeTrust"]
    assert (cond["status"], cond["reason"]) == ("False", "NodeAgentNotInstalled")
    assert ("Warning", "NodeAgentNotInstalled", cond["message"]) in conditions.transitions(ok, bad)
    assert conditions.transitions(bad, bad) == []  # said once
    degraded = next(c for c in bad["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"  # the registry itself serves
    assert not [c for c in _status(None)["conditions"] if c["type"] == "NodeTrust"]


def cm(name: str, hosts: list[str], ca: bytes | None = CA, registry: str = "ns/reg") -> dict:
    data = {DATA_HOSTS: "".join(f"{h}\n" for h in hosts)}
    if ca:
        data[DATA_CA] = ca.decode()
    return {"metadata": {"name": name, "annotations": {"registry.operator.dev/registry": registry}}, "data": data}


def test_hosts_toml_points_at_the_ca_next_to_it():
    text = files.hosts_toml("10.250.0.1:31234", "ns/reg", ca=True)
    assert 'server = "https://10.250.0.1:31234"' in text
    assert '[host."https://10.250.0.1:31234"]' in text
    assert 'capabilities = ["pull", "resolve"]' in text
    assert 'ca = "ca.crt"' in text  # relative: containerd resolves it in the host's directory
    assert "ca =" not in files.hosts_toml("h:1", "ns/reg", ca=False)


def test_desired_files_per_host_first_claim_wins_and_bad_names_are_skipped():
    want, problems = files.desired([cm("b", ["h:1", "../x:1"]), cm("a", ["h:1", "[fd00::1]:5000"], ca=None)])
    assert sorted(want) == ["[fd00::1]:5000", "h:1"]
    assert want["h:1"][files.MARKER] == b"a\n" and files.CA not in want["h:1"]
    assert len(problems) == 2 and any("'../x:1'" in p for p in problems) and any("already" in p for p in problems)
    one, _ = files.desired([cm("a", ["h:1"])])
    assert set(one["h:1"]) == {files.HOSTS_TOML, files.CA, files.MARKER}


def test_plan_writes_what_changed_removes_only_our_directories_and_leaves_foreign_ones():
    want, _ = files.desired([cm("a", ["new:1", "same:1", "theirs:1"])])
    have = {"same:1": want["same:1"], "old:1": {files.MARKER: b"a\n"}, "theirs:1": None, "manual:1": None}
    plan = files.plan(want, have)
    assert list(plan.write) == ["new:1"]
    assert plan.remove == ["old:1"]
    assert plan.foreign == ["theirs:1"]
    assert not files.plan(want | {"new:1": want["new:1"]}, {**have, "new:1": want["new:1"], "old:1": None})


def test_apply_writes_rotates_and_removes_in_a_directory(tmp_path: Path):
    (tmp_path / "manual:1").mkdir()
    (tmp_path / "manual:1" / "hosts.toml").write_text("mine")
    want, _ = files.desired([cm("a", ["h:1", "manual:1"])])
    files.apply(tmp_path, files.plan(want, files.read(tmp_path)))
    assert (tmp_path / "h:1" / "ca.crt").read_bytes() == CA
    assert (tmp_path / "manual:1" / "hosts.toml").read_text() == "mine"  # not ours: untouched
    assert oct((tmp_path / "h:1" / "hosts.toml").stat().st_mode & 0o777) == "0o644"

    rotated, _ = files.desired([cm("a", ["h:1"], ca=CA + CA)])
    files.apply(tmp_path, files.plan(rotated, files.read(tmp_path)))
    assert (tmp_path / "h:1" / "ca.crt").read_bytes() == CA + CA
    assert not [p for p in os.listdir(tmp_path / "h:1") if p.endswith(".tmp")]
    assert not files.plan(rotated, files.read(tmp_path))  # settled: nothing more to do

    files.apply(tmp_path, files.plan({}, files.read(tmp_path)))
    assert sorted(os.listdir(tmp_path)) == ["manual:1"]


def test_crd_refuses_node_trust_without_tls():
    """The rule is in the CRD (tests/integration/test_node_trust.py sees the API server apply it)."""
    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / "registries.yaml").read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert [r for r in rules if "nodeTrust" in r["rule"] and "Disabled" in r["rule"] and r["fieldPath"] == ".nodeTrust"]


def test_the_agents_namespace_is_a_setting():
    assert Config().node_trust_namespace == "registry-operator-node-trust"
    assert load({"REGISTRY_OPERATOR_NODE_TRUST_NAMESPACE": "nt"}).node_trust_namespace == "nt"


def test_no_agent_namespace_is_said_and_looked_at_again_not_retried():
    from lightkube import ApiError
    from lightkube.models.meta_v1 import Status

    class Response:
        def json(self):
            return Status(code=404, reason="NotFound").to_dict()

    result = publish.Published()
    publish._trouble(result, "ConfigMap x/y", ApiError(response=Response()))
    assert [p.reason for p in result.problems] == ["NodeAgentNotInstalled"] and not result.retry
    assert result.recheck


def stored(name: str, created: str, hosts: list[str], registry: str) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "annotations": {"registry.operator.dev/registry": registry}},
            "data": {DATA_HOSTS: "".join(f"{h}\n" for h in hosts)}}


def test_a_host_stays_with_the_registry_that_published_it_first():
    older = stored("a.ns-node-trust", "2026-12-01T10:00:00Z", ["10.250.0.1:5000", "a.ns.svc:5000"], "ns/a")
    newer = stored("b.ns-node-trust", "2026-12-01T11:00:00Z", ["10.250.0.1:5000", "b.ns.svc:5000"], "ns/b")
    free, problem = publish.claims(["10.250.0.1:5000", "b.ns.svc:5000"], newer, [older])
    assert free == ["b.ns.svc:5000"]
    assert problem.reason == "NodeTrustHostTaken" and "10.250.0.1:5000 (Registry ns/a)" in problem.message
    assert publish.Published(problems=[problem]).recheck  # it gets the host once ns/a lets go
    assert publish.claims(["10.250.0.1:5000", "a.ns.svc:5000"], older, [newer]) == (
        ["10.250.0.1:5000", "a.ns.svc:5000"], None)  # the older one keeps it
    free, problem = publish.claims(["10.250.0.1:5000"], None, [newer])  # not stored yet: newer than all
    assert free == [] and problem is not None
    # The agent settles a moment's overlap the same way: the older ConfigMap wins.
    want, problems = files.desired([{**newer, "data": {**newer["data"], DATA_CA: "new"}},
                                    {**older, "data": {**older["data"], DATA_CA: "old"}}])
    assert want["10.250.0.1:5000"][files.CA] == b"old" and problems


def test_the_agent_writes_nothing_before_its_first_list_and_says_each_warning_once(tmp_path: Path, caplog):
    (tmp_path / "mine:1").mkdir()  # not the agent's
    agent = Agent(tmp_path)
    assert not agent.sync()  # nothing known yet: an empty list would remove everything
    agent.known = {"a": cm("a", ["h:1", "mine:1"])}
    with caplog.at_level("WARNING"):
        assert list(agent.sync().write) == ["h:1"]
        (tmp_path / "h:1" / "ca.crt").unlink()
        assert list(agent.sync().write) == ["h:1"]  # what a resync finds missing comes back
        assert not agent.sync()
    assert [r.message for r in caplog.records].count(
        f"{tmp_path / 'mine:1'}: the directory exists and was not made by this agent; left alone") == 1



def test_a_cache_names_its_upstream_as_image_names_spell_it():
    def mirror(url: str) -> str | None:
        return publish.mirror_of(spec.parse("m", "ns", {"proxy": {"remoteURL": url}}))

    assert mirror("https://registry-1.docker.io") == "docker.io"
    assert mirror("https://quay.io:443") == "quay.io" and mirror("https://origin.corp:5000") == "origin.corp:5000"
    assert publish.mirror_of(spec.parse("reg", "ns", {})) is None
    s = spec.parse("m", "ns", {"proxy": {"remoteURL": "https://origin.corp:5000"}, "nodeTrust": {"enabled": True}})
    assert publish.config_map(s, "u", "agents", CA, ["a:1"])["data"][DATA_MIRROR_OF] == "origin.corp:5000"
    assert DATA_MIRROR_OF not in publish.config_map(s, "u", "agents", CA, [])["data"]  # nothing to mirror to


def test_the_upstream_directory_sends_pulls_to_the_cache_first():
    # As the operator publishes them (publish.hosts): the Service names, then the node address.
    names = ["m.ns.svc:5000", "m.ns.svc.cluster.local:5000", "10.250.0.1:31000", "reg.corp:5000"]
    cache = cm("m", names, registry="ns/m")
    cache["data"][DATA_MIRROR_OF] = "origin.corp:5000"
    want, problems = files.desired([cache])
    assert problems == [] and sorted(want) == sorted([*names, "origin.corp:5000"])
    toml = want["origin.corp:5000"][files.HOSTS_TOML].decode()
    assert 'server = "https://origin.corp:5000"' in toml  # the fallback when no mirror answers
    # A node resolves the IP and a DNS name, not a Service name (with or without the cluster domain): those
    # are tried first (seen on the real node: the cluster-domain name came first).
    tried = re.findall(r'\[host."https://([^"]+)"\]', toml)
    assert tried == ["10.250.0.1:31000", "reg.corp:5000", "m.ns.svc:5000", "m.ns.svc.cluster.local:5000"]
    assert toml.count('ca = "ca.crt"') == 4 and want["origin.corp:5000"][files.CA] == CA
    # An upstream that an older Registry already publishes keeps its own directory.
    origin = cm("o", ["origin.corp:5000"], registry="ns/origin")
    origin["metadata"]["creationTimestamp"], cache["metadata"]["creationTimestamp"] = "2026-01-01", "2026-02-01"
    want, problems = files.desired([origin, cache])
    assert want["origin.corp:5000"][files.MARKER] == b"o\n" and "its mirror skipped" in problems[0]
