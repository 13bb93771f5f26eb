"""The real node's node-trust agent (hack/localcluster/node.py): manifests/node-trust/ patched for the node."""

from pathlib import Path

import yaml
from localcluster.node import NODE_NAME, RealNode

from registry_operator.names import NODE_AGENT


def test_the_real_nodes_agent_writes_its_certs_d_and_runs_there_only():
    """hack/localcluster's patch of manifests/node-trust/ (the e2e test and the demo use it)."""
    root = Path(__file__).parents[2] / "manifests" / "node-trust"
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    objects = [d for f in kustomization["resources"] for d in yaml.safe_load_all((root / f).read_text()) if d]
    own = RealNode.node_agent(objects, Path("/w"))
    pod = next(o for o in own if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "certs-d", "hostPath": {"path": "/w/node/certs.d", "type": "DirectoryOrCreate"}}]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": NODE_NAME}
    moved = RealNode.node_agent(objects, Path("/w"), "elsewhere")
    assert "Namespace" not in {o["kind"] for o in moved}
    assert {o["metadata"]["namespace"] for o in moved} == {"elsewhere"}
    agent = next(o for o in moved if o["kind"] == "RoleBinding" and o["metadata"]["name"] == NODE_AGENT)
    assert agent["subjects"][0]["namespace"] == "elsewhere"
    operator = next(o for o in moved if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "registry-operator")
    assert operator["subjects"][0]["namespace"] == "registry-operator-system"  # the operator stays where it is
    assert objects[0]["kind"] == "Namespace"  # the input is left as it was
