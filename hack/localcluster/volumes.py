"""PersistentVolumes on the real node that a non-root registry can write: a small pool of static ``local`` volumes.

kwok's StorageClass gives hostPath volumes, root-owned directories on which the kubelet never applies a pod's
``fsGroup``, so a registry running as UID 1000 cannot write them. The kubelet does apply ``fsGroup`` to ``local``
volumes (group ownership, setgid, group write, on first mount), so a directory of ours, declared as a ``local``
PersistentVolume pinned to the real node, is what a Registry's claim binds to.

Static volumes rather than a provisioner: nothing has to run or be stopped, the scheduler binds a claim to a volume
of the node it picked (``WaitForFirstConsumer``, no provisioner), and ``down`` only removes directories. A volume
is used once: a claim deleted leaves its volume ``Released`` (``Retain``; the ``local`` plugin cannot delete), which
is what a test session needs, and a new ``up`` starts with a fresh pool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .kubeconfig import dump_yaml

STORAGE_CLASS = "real-node-local"
POOL_SIZE = 4
CAPACITY = "100Gi"  # more than any example claims; a local volume's capacity is not enforced anyway


def directory(node_dir: Path, index: int) -> Path:
    return node_dir / "volumes" / f"pv-{index}"


def manifests(node_dir: Path, node_name: str, default: bool) -> str:
    """The StorageClass and POOL_SIZE volumes, each a directory under ``<node_dir>/volumes`` on ``node_name``.

    ``default`` when the real node is the only node: claims without a class (``examples/persistent.yaml`` in
    hack/quickstart) then get a volume the registry can write; with kwok nodes too, kwok's class stays the
    default, since a claim pinned to the real node would keep a pod on a kwok node from being scheduled."""
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true" if default else "false"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }
    on_node = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{STORAGE_CLASS}-{i}"},
            "spec": {
                "capacity": {"storage": CAPACITY},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": "Filesystem",
                "local": {"path": str(directory(node_dir, i))},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [on_node]}]}},
            },
        }
        for i in range(POOL_SIZE)
    ]
    return "---\n".join(dump_yaml(obj) for obj in (storage_class, *volumes))


def make_directories(node_dir: Path) -> None:
    """Empty, root-owned directories: the kubelet gives them the pod's fsGroup when it first mounts one."""
    for i in range(POOL_SIZE):
        directory(node_dir, i).mkdir(parents=True, mode=0o755)


def remove_directories(node_dir: Path) -> None:
    shutil.rmtree(node_dir / "volumes", ignore_errors=True)
