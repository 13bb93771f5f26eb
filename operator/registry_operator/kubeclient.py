"""The operator's one API client: lightkube's AsyncClient over connections it keeps.

lightkube leaves httpx's pool at its defaults: 20 idle connections kept for 5 s. A reconcile reads a dozen
objects at once and sixteen reconcile together, so under load most connections were closed right after one
request and opened again with a new TLS handshake; and a Registry that became available a few seconds after
its first reconcile paid a dozen handshakes again (60-80 ms each on two busy cores, measured in the operator's
debug log), after its pods were ready, on the path to Ready. Kept for a minute and up to the number in flight,
connections are opened once.
"""

from __future__ import annotations

import httpx2
from lightkube import AsyncClient
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import KubeConfig

# Requests in flight at once: sixteen reconciles of about a dozen reads, and a long-lived request per watch.
CONNECTIONS = 64
# Below the API server's idle timeout (90 s, k8s.io/apiserver secure_serving.go): we close an idle connection
# before it does, so no request is ever sent on one the server is closing.
KEEPALIVE_SECONDS = 60.0


def client(field_manager: str | None = None) -> AsyncClient:
    """An AsyncClient for the kubeconfig or in-cluster account lightkube would pick, keeping its connections."""
    config = KubeConfig.from_env().get()
    transport = httpx2.AsyncHTTPTransport(
        verify=verify_cluster(config.cluster, config.user, config.abs_file),
        limits=httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS,
                             keepalive_expiry=KEEPALIVE_SECONDS),
    )
    return AsyncClient(config, field_manager=field_manager, transport=transport)
