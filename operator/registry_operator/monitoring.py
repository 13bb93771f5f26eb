"""Whether the cluster serves prometheus-operator's PodMonitor: asked once, at startup, by API discovery.

Most clusters have no prometheus-operator; the operator must work there, and must not pay a request per
reconcile to find out. The discovery document of `monitoring.coreos.com/v1` answers it in one GET that every
authenticated client may make, so a namespaced install (no cluster-wide permission, manifests/namespaced)
finds it too. A CRD installed later is noticed at the next operator start (the README says so).
"""

from __future__ import annotations

import logging

import httpx2
from lightkube import AsyncClient

log = logging.getLogger(__name__)

GROUP_VERSION = "monitoring.coreos.com/v1"


async def pod_monitors(client: AsyncClient) -> bool:
    """True when PodMonitor is served; False when it is not, or when discovery fails (logged once)."""
    # lightkube has no call for discovery documents; its HTTP client carries the server address and credentials.
    http: httpx2.AsyncClient = client._client._client  # noqa: SLF001
    try:
        response = await http.get(f"/apis/{GROUP_VERSION}")
    except httpx2.HTTPError as exc:
        log.warning("API discovery of %s failed (%s): no PodMonitors", GROUP_VERSION, type(exc).__name__)
        return False
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        log.warning("API discovery of %s answered %d: no PodMonitors", GROUP_VERSION, response.status_code)
        return False
    served = any(r.get("name") == "podmonitors" for r in response.json().get("resources") or ())
    if served:
        log.info("%s serves podmonitors: one PodMonitor per Registry", GROUP_VERSION)
    return served
