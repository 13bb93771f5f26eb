"""The real entry point as a subprocess: TLS listener, a token over HTTPS, clean exit on SIGTERM."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import select
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import registry_operator


def write_tls_pair(directory: Path) -> tuple[str, str]:
    """A self-signed serving certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-service")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def start(config_path: str, *args: str) -> subprocess.Popen[str]:
    package_root = str(Path(registry_operator.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "registry_operator.token", "--config", config_path, "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# What a read_until call read past its matched line, for the next call (or `rest`) of the same process.
_PENDING: dict[int, str] = {}


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 15.0) -> re.Match[str]:
    """The first line of stderr matching `pattern`. The pipe is read unbuffered: `select` sees only what the OS
    holds, so a text stream's readline, which may take two lines at once into its own buffer, would leave the
    second unseen until the timeout (as it did under load)."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
    pending, seen = _PENDING.pop(process.pid, ""), []
    while True:
        while "\n" in pending:
            line, pending = pending.split("\n", 1)
            seen.append(line)
            if match := re.search(pattern, line):
                _PENDING[process.pid] = pending
                return match
        remaining = (deadline - dt.datetime.now()).total_seconds()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(0.2, remaining))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk.decode()
    raise AssertionError(f"{pattern!r} not seen in {seen + [pending]}")


def rest(process: subprocess.Popen[str]) -> str:
    """Everything on stderr that no read_until call has matched yet, up to the process's exit."""
    assert process.stderr is not None
    return _PENDING.pop(process.pid, "") + os.read(process.stderr.fileno(), 1 << 20).decode()


def test_serves_tls_and_exits_cleanly_on_sigterm(mounted: Any, tmp_path: Path) -> None:
    cert_path, key_path = write_tls_pair(tmp_path)
    mounted.write_config(tlsCertPath=cert_path, tlsKeyPath=key_path)
    process = start(mounted.config_path)
    try:
        port = int(read_until(process, r"listening on https://127\.0\.0\.1:(\d+)").group(1))
        context = ssl.create_default_context(cafile=cert_path)
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/token?service=ns/registry&scope=repository:team-a/x:pull",
            headers={"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            body = json.load(response)
        assert body["expires_in"] == 120 and body["token"].count(".") == 2
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        read_until(process, "shutting down")
        assert process.wait(timeout=15) == 0
        assert "alice-pw" not in rest(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_refuses_to_start_with_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"service": "s", "ttlSecs": 300}))
    process = start(str(config))
    try:
        assert process.wait(timeout=15) == 1
        assert process.stderr is not None
        assert "cannot start: unknown keys ['ttlSecs']" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_answers_are_counted_on_a_metrics_listener_of_their_own(mounted: Any, tmp_path: Path) -> None:
    mounted.write_config(metricsListen="0.0.0.0:5002")  # as rendered; moved to loopback like the pod runner does
    process = start(mounted.config_path, "--metrics-listen", "127.0.0.1:0")
    try:
        metrics_port = int(read_until(process, r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        port = int(read_until(process, r"listening on http://127\.0\.0\.1:(\d+)").group(1))
        token = f"http://127.0.0.1:{port}/token?service=ns/registry"
        for password, expected in (("alice-pw", 200), ("wrong", 401)):
            auth = {"Authorization": "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()}
            try:
                status = urllib.request.urlopen(urllib.request.Request(token, headers=auth), timeout=10).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected
        with pytest.raises(urllib.error.HTTPError, match="404"):  # never on the token port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'registry_token_requests_total{code="200"} 1.0' in text
        assert 'registry_token_requests_total{code="401"} 1.0' in text
    finally:
        process.kill()
        process.wait()
