"""The operator as a local process: the one launcher the tests, the benchmarks and the quickstart share.

It runs this interpreter (``sys.executable``, so a virtualenv's packages come along) on this checkout's
``operator/`` with ``KUBECONFIG`` set, adds a ``--liveness`` endpoint on a free loopback port and returns once
kopf serves it (kopf starts it after its startup handlers and login). Its Prometheus metrics go to another free
port (``metrics_url``), so operators started side by side never fight over the default one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .binaries import REPO
from .poll import GaveUp, wait_until
from .ports import pick_free_ports
from .processes import log_tail, set_pdeathsig, terminate

OPERATOR_ENTRY = ("-m", "registry_operator")


class OperatorProcess:
    """The operator (or a wrapper of it) as a subprocess, output appended to a log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path, liveness_url: str, detach: bool):
        self.args = list(argv)
        self.log_path = Path(log_path)
        self.liveness_url = liveness_url
        port = env.get("REGISTRY_OPERATOR_METRICS_PORT", "off")
        self.metrics_url = f"http://127.0.0.1:{port}/metrics" if port.isdigit() and port != "0" else None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to the caller, who stops it
                preexec_fn=None if detach else set_pdeathsig,  # attached: dies with the caller
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        if not self.running():
            raise GaveUp(
                f"the operator exited with code {self.returncode}; its log:\n{log_tail(self.log_path, 60)}"
            )

    def _live(self) -> bool:
        self.assert_running()
        with urllib.request.urlopen(self.liveness_url, timeout=2) as resp:
            return resp.status == 200

    def wait_live(self, timeout: float) -> None:
        """Until kopf serves the liveness endpoint; AssertionError with the log tail when it exits or times out."""
        try:
            wait_until(self._live, timeout, f"the operator to serve {self.liveness_url}")
        except AssertionError as e:
            raise AssertionError(f"{e}; log tail:\n{log_tail(self.log_path, 60)}") from None

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait until the operator's output matches the regex; fails at once when it exits first."""
        rx = re.compile(pattern)

        def matched() -> re.Match[str] | None:
            self.assert_running()
            return rx.search(self.log())

        try:
            return wait_until(matched, timeout, f"an operator log line matching {pattern!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; log tail:\n{log_tail(self.log_path, 60)}") from None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (kopf shuts down gracefully), then SIGKILL after timeout. Returns the exit code."""
        terminate(self.process.pid, timeout=timeout, popen=self.process)
        return self.returncode


def start_operator(
    kubeconfig: str | Path,
    log_path: Path,
    args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
    *,
    entry: Sequence[str] = OPERATOR_ENTRY,
    pythonpath: Sequence[Path] = (REPO / "operator",),
    detach: bool = False,
) -> OperatorProcess:
    """``python <entry> <args or --all-namespaces> --liveness=...`` with KUBECONFIG, returned once live.

    ``entry`` replaces ``-m registry_operator`` (the benchmarks wrap the operator in a counting module);
    ``pythonpath`` goes before any inherited PYTHONPATH; ``detach`` lets the process outlive the caller
    (``hack/cluster operator``). A process that does not become live is stopped.
    """
    full_env = dict(os.environ)
    inherited = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    full_env.update(
        KUBECONFIG=str(kubeconfig),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([*map(str, pythonpath), *inherited]),
    )
    ports = pick_free_ports(["operator-liveness", "operator-metrics"])
    full_env["REGISTRY_OPERATOR_METRICS_PORT"] = str(ports["operator-metrics"])
    full_env.update(env or {})
    port = ports["operator-liveness"]
    url = f"http://127.0.0.1:{port}/healthz"
    scope = list(args) if args is not None else ["--all-namespaces"]
    proc = OperatorProcess([sys.executable, *entry, *scope, f"--liveness={url}"], full_env, log_path, url, detach)
    try:
        proc.wait_live(ready_timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
