"""Data path: push and pull of a 10 MiB image through an operator-configured registry, against the same
registry program with TLS and authentication switched off, in the same run.

Variants, each a fresh registry process with its own storage under one work directory:
- `plain`: the operator's rendered config.yml minus `http.tls` and `auth` (the floor);
- `tls`: minus `auth` only (same certificate), to split the overhead into TLS and authentication;
- `operator`: the Deployment's pod as the operator rendered it, run by tests/support/podrunner (htpasswd, TLS);
- `operator-direct` (control): the `operator` config and files run directly like `plain`, to show that
  podrunner itself costs nothing;
- `bcrypt4` (what-if): the `operator` config with the same password re-hashed at bcrypt cost 4;
- `token`: an `auth.mode: token` Registry, its registry and token-service pods run by podrunner, the realm on
  `localhost` behind tests/support/token_clients' ServiceProxy (skipped if that helper is unavailable).
The binary is the pinned distribution v3 (`registry:3`). Client: crane, a fresh process per operation, a new
random image per iteration (no blob is ever already present), variants interleaved round-robin.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret, ServiceAccount

from tests.support import ociimage
from tests.support.clients import Crane
from tests.support.deployed import DeployedRegistry, create_registry, wait_for
from tests.support.podrunner import DISTRIBUTION_3, free_port

SPEC: dict[str, Any] = {"version": "3", "tls": {"ipAddresses": ["127.0.0.1"]}, "auth": {"users": [{"name": "alice"}]}}
TOKEN_ACCESS = [{"users": ["alice"], "repositories": ["bench/*"], "actions": ["pull", "push"]}]


@dataclass
class Target:
    name: str
    address: str
    crane: Crane
    insecure: bool
    stop: Callable[[], None]

    def run(self, *args: str) -> float:
        flags = ["--insecure"] if self.insecure else []
        t0 = time.perf_counter()
        self.crane.run(*flags, *args, timeout=300)
        return time.perf_counter() - t0


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"registry exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"registry not listening on {port}") from None
            time.sleep(0.05)


def _direct(
    workdir: Path, name: str, config: dict[str, Any], files: dict[str, bytes], ca: bytes, creds: tuple[str, str] | None
) -> Target:
    """Run the registry binary directly with `config` (paths rewritten to `workdir`)."""
    root = workdir / name
    root.mkdir()
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    config = yaml.safe_load(yaml.safe_dump(config))
    port = free_port()
    config["http"]["addr"] = f"127.0.0.1:{port}"
    config["http"].pop("debug", None)
    config["storage"]["filesystem"]["rootdirectory"] = str(root / "data")
    if "tls" in config["http"]:
        config["http"]["tls"]["certificate"] = str(root / "tls.crt")
        config["http"]["tls"]["key"] = str(root / "tls.key")
    if "auth" in config:
        config["auth"]["htpasswd"]["path"] = str(root / "htpasswd")
    (root / "config.yml").write_text(yaml.safe_dump(config))
    env = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none", "REGISTRY_HTTP_SECRET": secrets.token_hex(32)}
    log = root / "registry.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([str(DISTRIBUTION_3), "serve", str(root / "config.yml")], env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    _wait_port(port, process, log)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    address = f"127.0.0.1:{port}"
    tls = "tls" in config["http"]
    return Target(name, address, Crane(root, ca, address, creds), insecure=not tls, stop=stop)


def _token_target(client: Client, namespace: str, workdir: Path, log: Callable[[str], None]) -> Target | None:
    """The token-mode variant, or None when tests/support/token_clients is not there to run it."""
    try:
        from tests.support.token_clients import ServiceProxy, start_token_service
    except ImportError as exc:
        log(f"datapath: token variant skipped ({exc})")
        return None
    proxy = ServiceProxy()
    spec = {
        "version": "3",
        "tls": {"ipAddresses": ["127.0.0.1"], "dnsNames": ["localhost"]},
        "auth": {"mode": "token", "users": [{"name": "alice"}], "access": TOKEN_ACCESS,
                 "tokenRealm": f"https://localhost:{proxy.port}/token"},
    }  # fmt: skip
    (workdir / "token-pods").mkdir()
    reg = create_registry(client, namespace, "tok", spec, workdir / "token-pods")
    service = start_token_service(reg, proxy, workdir / "token-pods")
    try:
        reg.start_pod()
    except BaseException:
        service.stop()
        raise
    root = workdir / "token-client"
    root.mkdir()
    ca = reg.ca_pem()

    def stop() -> None:
        reg.stop()
        service.stop()

    crane = Crane(root, ca, reg.address, ("alice", reg.passwords()["alice"]))
    return Target("token", reg.address, crane, False, stop)


def run(
    kubeconfig: Path,
    workdir: Path,
    iterations: int,
    size: int = 10 * ociimage.MIB,
    layers: int = 3,
    namespace: str = "bench-datapath",
    controls: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create the Registry (the operator must be running), run every variant, time push and pull."""
    client = Client(KubeConfig.from_file(str(kubeconfig)), field_manager="bench")
    client.apply(Namespace(metadata=ObjectMeta(name=namespace)), field_manager="bench")
    workdir.mkdir(parents=True, exist_ok=True)
    deployed: DeployedRegistry | None = None
    targets: list[Target] = []
    try:
        wait_for(lambda: client.get(ServiceAccount, "default", namespace=namespace), "default ServiceAccount")
        (workdir / "pods").mkdir()
        deployed = create_registry(client, namespace, "reg", SPEC, workdir / "pods")
        runner = deployed.start_pod()
        ca = deployed.ca_pem()
        password = deployed.passwords()["alice"]
        creds = ("alice", password)
        config = yaml.safe_load(client.get(ConfigMap, "reg-config", namespace=namespace).data["config.yml"])
        tls = client.get(Secret, "reg-tls", namespace=namespace).data
        tls_files = {k: base64.b64decode(tls[k]) for k in ("tls.crt", "tls.key")}
        htpasswd = base64.b64decode(client.get(Secret, "reg-htpasswd", namespace=namespace).data["htpasswd"])

        plain = yaml.safe_load(yaml.safe_dump(config))
        plain["http"].pop("tls")
        plain.pop("auth")
        tls_only = yaml.safe_load(yaml.safe_dump(config))
        tls_only.pop("auth")
        cheap = "alice:" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode() + "\n"

        op_root = workdir / "operator-client"
        op_root.mkdir()
        targets = [
            _direct(workdir, "plain", plain, {}, ca, None),
            _direct(workdir, "tls", tls_only, tls_files, ca, None),
            Target("operator", runner.address, Crane(op_root, ca, runner.address, creds), False, runner.stop),
        ]
        if controls:
            targets += [
                _direct(workdir, "operator-direct", config, {**tls_files, "htpasswd": htpasswd}, ca, creds),
                _direct(workdir, "bcrypt4", config, {**tls_files, "htpasswd": cheap.encode()}, ca, creds),
            ]
        token = _token_target(client, namespace, workdir, log)
        if token is not None:
            targets.append(token)
        images = workdir / "images"
        times: dict[str, dict[str, list[float]]] = {t.name: {"push": [], "pull": []} for t in targets}
        for i in range(iterations + 1):  # iteration 0 warms up every registry and client: not counted
            image = ociimage.build(images / f"img-{i}", size=size, layers=layers)
            for target in targets:
                ref = f"{target.address}/bench/app:{i}"
                push = target.run("push", str(image.path), ref)
                dest = workdir / f"pulled-{target.name}-{i}"
                pull = target.run("pull", "--format=oci", ref, str(dest))
                shutil.rmtree(dest, ignore_errors=True)
                if i:
                    times[target.name]["push"].append(push)
                    times[target.name]["pull"].append(pull)
            shutil.rmtree(image.path, ignore_errors=True)
        log(f"datapath: {iterations} iterations x {len(targets)} variants done")
    finally:
        for target in targets:
            target.stop()
        if deployed is not None:
            deployed.stop()
    out: dict[str, Any] = {"size": size, "layers": layers, "iterations": iterations, "variants": {}}
    for name, t in times.items():
        out["variants"][name] = {
            op: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v} for op, v in t.items()
        }
    return out
