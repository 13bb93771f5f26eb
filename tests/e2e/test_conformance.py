"""The OCI distribution-spec conformance suite against an operator-configured registry (TLS + htpasswd).

Every workflow CNCF distribution implements is tested and must pass. Switched off, because distribution (2.8
and 3.x alike) does not implement them at all, so they would only re-prove a known absence at ~50 ms of bcrypt
per request:
- the referrers API and manifests with a ``subject`` (OCI 1.1): no referrers endpoint; the ``empty/referrers``
  probe and every subject data set fail;
- sha512 digests: only sha256 is accepted for blobs and manifests;
- non-distributable layers: manifests whose layers carry ``urls`` are refused unless
  ``validation.manifests.urls.allow`` is configured (the operator renders no such rule; these layers are
  deprecated in image-spec 1.1).
distribution 2.8 additionally fails a few checks that 3.x passes; they are its known bugs (2.8 is end of
life), listed in KNOWN_FAILURES and required to be exactly what fails, so a change either way is noticed.

Each run costs about a minute of bcrypt checks on one core (one per request at cost 10), so the runs of all
selected versions start together, in the background, when the first conformance test needs its result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.support.clients import ConformanceResult, run_conformance
from tests.support.deployed import VERSIONS, DeployedRegistry

NOT_IMPLEMENTED = {
    "OCI_API_REFERRER": "false",
    "OCI_DATA_SUBJECT": "false",
    "OCI_DATA_SUBJECT_MISSING": "false",
    "OCI_DATA_SUBJECT_LIST": "false",
    "OCI_DATA_SHA512": "false",
    "OCI_DATA_NONDISTRIBUTABLE": "false",
}

KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "2.8": {
        # 202 instead of 416 for a PATCH whose Content-Range does not continue the upload.
        "OCI Conformance Test/sha256 blobs/chunked out-of-order/blob-patch-chunked": "accepts out-of-order chunk",
        "OCI Conformance Test/sha256 blobs/chunked out-of-order and put chunk/blob-patch-chunked": "same, final PUT",
        # An unsatisfiable Range (start > end, or beyond the blob) drops the connection instead of 416.
        "OCI Conformance Test/sha256 blobs/range requests/range 500-0": "invalid range: connection dropped",
        "OCI Conformance Test/sha256 blobs/range requests/range 5000-10000": "invalid range: connection dropped",
        # A malformed digest in the URL gives 500 instead of 400/404.
        "OCI Conformance Test/invalid-digest-format/manifest-put": "500 on malformed digest",
        "OCI Conformance Test/invalid-digest-format/manifest-get": "500 on malformed digest",
    },
    "3": {},
}


@pytest.fixture(scope="session")
def conformance_runs(
    request: pytest.FixtureRequest,
    shared: Callable[[str], DeployedRegistry],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[ConformanceResult]]]:
    """Started conformance runs (version -> result), one per version among the selected tests."""
    ids = {v: k for k, v in VERSIONS.items()}
    wanted = sorted(
        ids[item.callspec.id]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_oci_conformance"
    )
    pool = ThreadPoolExecutor(max_workers=len(wanted) or 1)
    runs = {}
    for version in wanted:
        reg = shared(version)
        runs[version] = pool.submit(
            run_conformance,
            tmp_path_factory.mktemp(f"conformance-{VERSIONS[version]}"),
            reg.ca_pem(),
            reg.address,
            ("alice", reg.passwords()["alice"]),
            {"OCI_REPO1": "conformance/repo1", "OCI_REPO2": "conformance/repo2", **NOT_IMPLEMENTED},
        )
    yield runs
    pool.shutdown(wait=True)


def test_oci_conformance(
    shared_registry: DeployedRegistry, conformance_runs: dict[str, Future[ConformanceResult]]
) -> None:
    version = shared_registry.get()["spec"]["version"]
    result = conformance_runs[version].result()
    print(f"\nOCI conformance, registry {version}: {result.passed} passed, {result.failed} failed, "
          f"{result.skipped} skipped (JUnit test cases)")  # fmt: skip
    for block in re.findall(
        r"(?:OCI Conformance Result|API conformance|Data conformance):.*?\n\n", result.output, re.S
    ):
        print(block.rstrip())
    print("skipped (registry answered 'unsupported', or switched off):", *sorted(set(result.skips)), sep="\n  ")
    assert result.passed > 0, result.output[-4000:]
    failed = set(result.failures)
    unexpected = sorted(failed - set(KNOWN_FAILURES[version]))
    fixed = sorted(set(KNOWN_FAILURES[version]) - failed)
    assert not unexpected, f"conformance failures on {version}: {unexpected}\n{result.output[-6000:]}"
    assert not fixed, f"known {version} failures now pass, update KNOWN_FAILURES: {fixed}"
