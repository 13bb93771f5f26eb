"""A real S3-compatible server for the storage.s3 tests: versitygw (``hack/build s3``) serving the S3 API over a
directory, on 127.0.0.1 only, plus the two S3 calls the tests make themselves (create a bucket, list its keys),
signed with AWS Signature Version 4 like any S3 client, so the listing is the server's answer, not a guess from
its directory layout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import os
import secrets
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from localcluster import read_versions

from .podrunner import CACHE_BIN, free_port

VERSITYGW = CACHE_BIN / f"versitygw-{read_versions()['VERSITYGW_VERSION']}" / "versitygw"
REGION = "us-east-1"
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    port: int
    root: Path  # the directory it serves: one sub-directory per bucket
    log_path: Path
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, timeout: float = 20) -> S3Server:
        if not VERSITYGW.exists():
            raise FileNotFoundError(f"{VERSITYGW} is not built (hack/build s3)")
        root, log_path = workdir / "s3-data", workdir / "versitygw.log"
        root.mkdir(parents=True)
        port, access_key, secret_key = free_port(), f"AK{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ROOT_ACCESS_KEY": access_key,
               "ROOT_SECRET_KEY": secret_key}
        with open(log_path, "ab") as log:
            process = subprocess.Popen([str(VERSITYGW), "--port", f"127.0.0.1:{port}", "posix", str(root)],
                                       env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, port, root, log_path, access_key, secret_key)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"versitygw exited with {process.returncode}:\n{server.log()}")
            try:
                server.request("GET", "/")  # ListBuckets: answers once it serves, signed or not
                return server
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise TimeoutError(f"versitygw did not listen on {port}:\n{server.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(self, method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One SigV4-signed request with an empty body: (status, body)."""
        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = f"127.0.0.1:{self.port}"
        payload = hashlib.sha256(b"").hexdigest()
        canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                                   for k, v in sorted((query or {}).items()))
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, urllib.parse.quote(path, safe="/-_.~"), canonical_query,
                               *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
        scope = f"{day}/{REGION}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _hmac(_hmac(_hmac(_hmac(f"AWS4{self.secret_key}".encode(), day), REGION), "s3"), "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path + (f"?{canonical_query}" if canonical_query else ""), headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def create_bucket(self, name: str) -> None:
        status, body = self.request("PUT", f"/{name}")
        assert status == 200, (status, body)

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        """Every object key under `prefix`, from ListObjectsV2 (following continuation tokens)."""
        out: set[str] = set()
        query = {"list-type": "2", "prefix": prefix}
        while True:
            status, body = self.request("GET", f"/{bucket}", query)
            assert status == 200, (status, body)
            root = ET.fromstring(body)
            out |= {c.findtext(f"{_NS}Key") or "" for c in root.iter(f"{_NS}Contents")}
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return out
            query = {**query, "continuation-token": token}
