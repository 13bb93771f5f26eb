"""Integration tests: the operator against a real control plane (etcd, kube-apiserver, controllers, kwok).

The fixtures (cluster, kubeconfig, kube_client, async_kube_client, namespace, operator, operator_with_rbac,
operator_factory, operator_rbac_kubeconfig, wait_for) come from hack/pytest_localcluster.py, registered once
for the whole tree by tests/conftest.py: defining them here again would start a second control plane when
tests/e2e runs in the same session. Tests in this directory are marked `integration` automatically.

The control plane needs `hack/build control-plane`; without it these tests fail (not skip) with a message
saying so. Against an existing cluster: `pytest tests/integration --kubeconfig PATH --allowed-contexts CTX`.
"""
