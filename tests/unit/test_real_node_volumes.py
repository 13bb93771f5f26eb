"""The real node's local volumes (hack/localcluster/volumes.py): what the harness declares, without a node."""

from pathlib import Path

import pytest
import yaml
from localcluster import volumes

DEFAULT = "storageclass.kubernetes.io/is-default-class"


@pytest.mark.parametrize("alone", [True, False])
def test_the_class_is_the_default_only_on_a_real_node_alone(alone: bool) -> None:
    """With kwok nodes too, kwok's class stays the default: a claim pinned to the real node strands a kwok pod."""
    docs = list(yaml.safe_load_all(volumes.manifests(Path("/w/node"), "real-node", default=alone)))
    [storage_class] = [d for d in docs if d["kind"] == "StorageClass"]
    assert storage_class["metadata"]["annotations"][DEFAULT] == ("true" if alone else "false")
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"


def test_volumes_are_local_directories_pinned_to_the_node() -> None:
    """``local``, not hostPath: the kubelet applies a pod's fsGroup only to the former."""
    docs = list(yaml.safe_load_all(volumes.manifests(Path("/w/node"), "real-node", default=True)))
    pvs = [d["spec"] for d in docs if d["kind"] == "PersistentVolume"]
    assert len(pvs) == volumes.POOL_SIZE
    assert {pv["local"]["path"] for pv in pvs} == {f"/w/node/volumes/pv-{i}" for i in range(volumes.POOL_SIZE)}
    for pv in pvs:
        assert pv["storageClassName"] == volumes.STORAGE_CLASS and "hostPath" not in pv
        [term] = pv["nodeAffinity"]["required"]["nodeSelectorTerms"]
        on_node = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["real-node"]}
        assert term["matchExpressions"] == [on_node]
