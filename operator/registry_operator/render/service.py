"""Services: only the registry port is exposed; the debug port (pprof, metrics) never is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import names
from .common import Obj, metadata


def service(
    name: str,
    owner: Mapping[str, Any],
    component: str,
    port: int,
    target: str,
    type_: str = "ClusterIP",
    node_port: int | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    """A Service with one port, forwarding to the container port named `target`."""
    port_spec: Obj = {"name": target, "port": port, "targetPort": target, "protocol": "TCP"}
    if node_port and type_ != "ClusterIP":
        port_spec["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, owner, component, annotations=annotations),
        "spec": {
            "type": type_,
            "selector": names.selector(owner["metadata"]["name"], component),
            "ports": [port_spec],
        },
    }
