"""Top-level test configuration. Unit tests need nothing from here.

Registers the cluster plugin (hack/pytest_localcluster.py) for the whole tree, so tests/integration and
tests/e2e share one session-scoped control plane. The plugin imports only the standard library; a cluster
starts only when a test uses one of its fixtures (cluster, kubeconfig, kube_client, async_kube_client,
namespace, operator, operator_with_rbac, operator_factory, operator_rbac_kubeconfig, wait_for).
See that module's docstring.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
for _path in (_REPO / "hack", _REPO / "operator"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

pytest_plugins = ["pytest_localcluster"]
