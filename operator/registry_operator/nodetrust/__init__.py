"""Nodes trust the registry (`spec.nodeTrust`): containerd on every node gets `certs.d/<host:port>/hosts.toml`
and `ca.crt` for each trusting Registry, so pods pull its images over verified TLS with no manual node setup.

Two programs meet at one ConfigMap per trusting Registry, kept in the node agent's own namespace:

- the operator (`publish`) writes it: the Registry's CA and the host:port names nodes may pull from, labelled
  with the Registry's UID (`names.LABEL_NODE_TRUST_OF`; another namespace, so no owner reference: a finalizer
  removes it, as for pull Secrets);
- the node agent (`python -m registry_operator.nodetrust`, a DaemonSet: `agent`) watches only those ConfigMaps
  in its namespace and makes the certs.d directories say the same (`files`), removing exactly the directories
  it made once their ConfigMap is gone. containerd reads them at the next pull: no restart.

A pull-through cache (`spec.proxy`) also names its upstream (`mirrorOf`): the agent then writes the upstream's
directory too, with the cache's hosts as mirrors, so a pod asking for `<upstream>/app:1` is served by the cache
and containerd falls back to the upstream itself only when no mirror answers.

This module holds only the contract both sides read: the ConfigMap's keys, and which ConfigMap a host belongs
to when two Registries name it (say both list a node's address in tls.ipAddresses): the one created first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DATA_CA = "ca.crt"  # the CA bundle clients must trust (two CAs while one rotates); absent: the system's roots
DATA_HOSTS = "hosts"  # host:port names, one a line
DATA_MIRROR_OF = "mirrorOf"  # a pull-through cache's upstream, as image names spell it: nodes pull it through us


def seniority(config_map: Mapping[str, Any]) -> tuple[str, str]:
    """Sort key: older ConfigMaps first (then by name). First come, first served: a host stays with the Registry
    that published it first, and a newer Registry naming it never takes it over."""
    meta = config_map["metadata"]
    return str(meta.get("creationTimestamp") or ""), meta["name"]
