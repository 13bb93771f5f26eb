"""bench/datapath_node.py (issue 12, item 7): the TLS-only and plain variants on the real node are the operator's
rendered registry pod and config with only `auth`, and then `http.tls`, taken out."""

from __future__ import annotations

import copy
import ipaddress

import pytest
import yaml
from builders import by_key
from cryptography import x509
from localcluster.network import NODE_IP

from bench import datapath_node
from bench.datapath_node import NODE_PORTS, variant_config, variant_objects


def _rendered(pipeline) -> tuple[dict, dict]:
    """The token Registry as the operator renders it: (its registry Deployment, its parsed config.yml)."""
    _, _, objects = pipeline.run(datapath_node.registry_specs(41234, htpasswd=False)["token"])
    children = by_key(objects)
    return children[("Deployment", "reg")], yaml.safe_load(children[("ConfigMap", "reg-config")]["data"]["config.yml"])


def test_the_realm_and_the_node_ip_are_names_the_certificates_carry(pipeline) -> None:
    """crane checks the token service against the realm's host and the registry against the node IP."""
    specs = datapath_node.registry_specs(41234, htpasswd=True)
    assert set(specs) == {"token", "htpasswd"}
    _, material, objects = pipeline.run(specs["token"])
    config = yaml.safe_load(by_key(objects)[("ConfigMap", "reg-config")]["data"]["config.yml"])
    assert config["auth"]["token"]["realm"] == "https://localhost:41234/token"
    san = x509.SubjectAlternativeName
    token = x509.load_pem_x509_certificate(material.token_tls.cert_pem).extensions.get_extension_for_class(san)
    assert "localhost" in token.value.get_values_for_type(x509.DNSName)
    serving = x509.load_pem_x509_certificate(material.serving_cert_pem).extensions.get_extension_for_class(san)
    assert ipaddress.ip_address(NODE_IP) in serving.value.get_values_for_type(x509.IPAddress)


def test_tls_only_drops_auth_and_plain_drops_tls_too(pipeline) -> None:
    _, config = _rendered(pipeline)
    before = copy.deepcopy(config)
    tls, plain = variant_config(config, "tls"), variant_config(config, "plain")
    assert config == before, "the rendered config is left alone"
    assert "auth" in config and "auth" not in tls and "auth" not in plain
    assert tls["http"]["tls"] == config["http"]["tls"] and "tls" not in plain["http"]
    without = {k: v for k, v in config.items() if k not in ("auth", "http")}
    assert {k: v for k, v in plain.items() if k != "http"} == without  # storage, log, health: as rendered
    with pytest.raises(ValueError, match="no derived variant"):
        variant_config(config, "token")


@pytest.mark.parametrize("variant", ["tls", "plain"])
def test_a_derived_variant_runs_the_rendered_pod_with_its_own_config(pipeline, variant: str) -> None:
    deployment, config = _rendered(pipeline)
    config_map, derived, service = variant_objects(deployment, config, variant, "bench")
    assert yaml.safe_load(config_map["data"]["config.yml"]) == variant_config(config, variant)
    pod, rendered = derived["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    scheme = "HTTPS" if variant == "tls" else "HTTP"
    assert {pod["containers"][0][p]["httpGet"]["scheme"] for p in ("readinessProbe", "livenessProbe")} == {scheme}
    same = lambda spec: {k: v for k, v in spec.items() if k not in ("volumes", "containers")}  # noqa: E731
    assert same(pod) == same(rendered) and pod["containers"][0]["image"] == rendered["containers"][0]["image"]
    assert [v for v in pod["volumes"] if v["name"] != "config"] == [v for v in rendered["volumes"]
                                                                    if v["name"] != "config"]  # fmt: skip
    labels = derived["spec"]["template"]["metadata"]["labels"]
    assert derived["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert not set(deployment["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())  # not the operator's
    assert service["spec"]["type"] == "NodePort" and service["spec"]["ports"][0]["nodePort"] == NODE_PORTS[variant]
    assert service["spec"]["ports"][0]["targetPort"] == 5000
