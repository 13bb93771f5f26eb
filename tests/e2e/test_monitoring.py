"""Monitoring with a real Prometheus (Debian's `prometheus` 2.42 and its `promtool`).

The alert rules in manifests/monitoring pass `promtool check rules` and their unit tests; a Prometheus on
loopback scrapes the operator's metrics port and the debug port of a Registry's pod (run by the pod runner,
whose debug listener moved to a loopback port), finds both targets up and the series the rules and the
dashboard use, and fires the certificate alert once its threshold exceeds the certificate's lifetime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import REPO, log_tail, pick_free_ports, set_pdeathsig, terminate

from tests.support import https
from tests.support.deployed import VERSIONS, DeployedRegistry, wait_for

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="prometheus/promtool not found: Debian's prometheus package (hack/install-deps installs it)",
)
RULES = REPO / "manifests" / "monitoring" / "prometheus-rules.yaml"
RULES_TEST = Path(__file__).with_name("monitoring") / "rules_test.yml"
FOURTEEN_DAYS = "14 * 86400"


def rule_groups(threshold: str = FOURTEEN_DAYS) -> str:
    """The PrometheusRule's groups as a plain rules file; `threshold` replaces the certificate alert's."""
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    text = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1 << 20)
    assert FOURTEEN_DAYS in text
    return text.replace(FOURTEEN_DAYS, threshold)


def promtool(*args: str, cwd: Path) -> str:
    assert PROMTOOL
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_pass_promtool(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(rule_groups())
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yml")
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml", cwd=tmp_path)


class Prometheus:
    """A Prometheus server on a loopback port with the given config, stopped by PID at the end."""

    def __init__(self, workdir: Path, config: dict[str, Any], rules: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": ["rules.yml"]}))
        self.url = f"http://127.0.0.1:{pick_free_ports(['prometheus'])['prometheus']}"
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=set_pdeathsig,
            )
        wait_for(self._ready, "Prometheus ready", timeout=30)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited:\n{log_tail(self.log_path, 30)}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        terminate(self.process.pid, popen=self.process)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], str], Prometheus]]:
    started: list[Prometheus] = []

    def start(config: dict[str, Any], rules: str) -> Prometheus:
        started.append(Prometheus(tmp_path / f"prometheus-{len(started)}", config, rules))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("version", sorted(VERSIONS), ids=VERSIONS.get)
def test_prometheus_scrapes_the_operator_and_a_registry_pod(
    deploy: Callable[..., DeployedRegistry], e2e_operator: Any, prometheus: Callable[..., Prometheus], version: str
) -> None:
    reg = deploy(version, pod_runner="test_monitoring: the debug port is on the pod's own loopback (no PodMonitor "
                 "in this cluster), which the pod runner moves to the host's")
    user, password = next(iter(reg.passwords().items()))
    assert https.request(reg.address, reg.ca_pem(), reg.host, "GET", "/v2/", auth=(user, password)).status == 200
    operator = urllib.parse.urlsplit(e2e_operator.metrics_url).netloc
    debug = f"127.0.0.1:{reg.runner.host_port('debug')}"  # the port the PodMonitor scrapes, moved to loopback
    ours = {"namespace": reg.namespace, "registry": reg.name}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            # As the ServiceMonitor and the PodMonitor label them (job from app.kubernetes.io/name).
            {"job_name": "registry-operator", "honor_labels": True, "static_configs": [{"targets": [operator]}]},
            {"job_name": "registry", "static_configs": [{"targets": [debug], "labels": {**ours, "pod": "reg-0"}}]},
        ],
    }
    # Certificates live 365 days: a 400-day threshold must fire at once, and only for Registries (each e2e
    # Registry this operator reconciled has the series, so look for ours).
    server = prometheus(config, rule_groups("400 * 86400"))

    def targets_up() -> dict[str, str] | None:
        health = {t["labels"]["job"]: t["health"] for t in server.api("targets")["activeTargets"]}
        return health if health == {"registry-operator": "up", "registry": "up"} else None

    started = time.monotonic()
    wait_for(targets_up, "both targets up in Prometheus", timeout=30)
    ready = f'registry_operator_registry_condition{{namespace="{reg.namespace}",name="{reg.name}",condition="Ready"}}'
    named = {
        ready: 1,
        f'registry_operator_certificate_expiration_timestamp_seconds{{namespace="{reg.namespace}",name="{reg.name}"}}':
            None,
        'registry_operator_reconcile_duration_seconds_count{result="success"}': None,
        'registry_operator_api_writes_total{kind="Deployment",verb="apply"}': None,
        f'registry_http_requests_total{{job="registry",namespace="{reg.namespace}",code="200"}}': None,
    }
    for expr, expected in named.items():
        result = wait_for(lambda e=expr: server.query(e), f"series {expr} in Prometheus", timeout=20)
        if expected is not None:
            assert float(result[0]["value"][1]) == expected, result

    def firing() -> list[dict[str, Any]]:
        return [a for a in server.api("alerts")["alerts"] if a["state"] == "firing"
                and a["labels"]["alertname"] == "RegistryCertificateExpiringSoon"
                and a["labels"].get("namespace") == reg.namespace and a["labels"].get("name") == reg.name]

    (alert,) = wait_for(firing, "RegistryCertificateExpiringSoon firing", timeout=20)
    assert alert["annotations"]["summary"].startswith(f"Registry {reg.namespace}/{reg.name}: its certificate expires")
    print(f"Prometheus: targets up, series present, alert firing {time.monotonic() - started:.1f}s after start")
