"""The quickstart's last step: push and pull a real image through a Registry the operator created.

There is no kubelet here, so the Registry's pod is run the way the e2e tests run it (tests/support/podrunner:
the Deployment's pod template, its Secret and ConfigMap volumes, the real registry program on 127.0.0.1).
Everything the client needs comes from what the operator published: the CA Secret named in status and the
generated password.

    python hack/demo.py [--namespace default] [--name demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "hack"), str(REPO / "operator")]

from lightkube import Client  # noqa: E402

from tests.support import ociimage  # noqa: E402
from tests.support.clients import Skopeo  # noqa: E402
from tests.support.deployed import DeployedRegistry, Registry  # noqa: E402

SPEC = {"tls": {"ipAddresses": ["127.0.0.1"]}, "auth": {"users": [{"name": "demo"}]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    client = Client(field_manager="registry-operator-demo")
    work = Path(tempfile.mkdtemp(prefix="registry-demo-"))
    client.apply(Registry(metadata={"name": args.name, "namespace": args.namespace}, spec=SPEC), force=True)
    reg = DeployedRegistry(client, args.namespace, args.name, work)
    status = reg.wait_ready(timeout=120)
    print(f"Registry {args.namespace}/{args.name} Ready: endpoint {status['endpoint']}, "
          f"CA in Secret {status['caSecretName']}, password in Secret {status['credentialsSecretName']}")
    runner = reg.start_pod()
    try:
        creds = ("demo", reg.passwords()["demo"])
        skopeo = Skopeo(work, reg.ca_pem())
        image = ociimage.build(work / "image", layers=3, size=4 * 1024 * 1024)
        ref = f"docker://{runner.address}/demo/hello:1"
        started = time.monotonic()
        skopeo.copy_to(image.ref, ref, creds)
        pushed = time.monotonic() - started
        skopeo.copy_from(ref, f"oci:{work / 'pulled'}:1", creds)
        pulled = json.loads((work / "pulled" / "index.json").read_text())["manifests"][0]["digest"]
        assert pulled == image.manifest_digest, (pulled, image.manifest_digest)
        tags = skopeo.list_tags(f"docker://{runner.address}/demo/hello", creds)
        print(f"pushed a 3-layer 4 MiB image over TLS as user demo in {pushed:.2f}s to {runner.address} "
              f"(the registry pod, run locally), pulled it back: digest {pulled} matches; tags {tags}")
    finally:
        runner.stop()


if __name__ == "__main__":
    main()
