"""The OCI distribution-spec conformance suite against an operator-configured registry (TLS + htpasswd).

The suite is told which version of the spec to hold the registry to; what a registry answers as "unsupported"
is recorded by the suite as Skip, not as a failure. Features switched off below are ones the registry version
does not implement at all; each is documented where it is switched off.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.clients import run_conformance
from tests.support.deployed import DeployedRegistry

# Spec features a distribution version lacks entirely, as OCI_* switches of the suite (documented per entry).
UNSUPPORTED: dict[str, dict[str, str]] = {
    "2.8": {},
    "3": {},
}


def test_oci_conformance(shared_registry: DeployedRegistry, tmp_path: Path) -> None:
    reg = shared_registry
    version = reg.get()["spec"]["version"]
    result = run_conformance(
        tmp_path,
        reg.ca_pem(),
        reg.address,
        ("alice", reg.passwords()["alice"]),
        {
            "OCI_REPO1": "conformance/repo1",
            "OCI_REPO2": "conformance/repo2",
            "OCI_API_PULL": "true",
            "OCI_API_PUSH": "true",
            "OCI_API_TAGS_LIST": "true",
            "OCI_API_MANIFESTS_DELETE": "true",
            "OCI_API_BLOBS_DELETE": "true",
            "OCI_API_TAGS_DELETE": "true",
            **UNSUPPORTED[version],
        },
    )
    summary = re.search(r"OCI Conformance Result:.*?(?=\n\n)", result.output, re.S)
    api = re.search(r"API conformance:.*?(?=\n\n)", result.output, re.S)
    data = re.search(r"Data conformance:.*?(?=\n\n)", result.output, re.S)
    print(f"\nregistry {version}: {result.passed} passed, {result.failed} failed, {result.skipped} skipped")
    for block in (summary, api, data):
        if block:
            print(block.group(0))
    assert result.passed > 0, result.output[-4000:]
    assert not result.failures, f"conformance failures on {version}: {result.failures}\n{result.output[-6000:]}"
