"""Plain HTTPS checks with Python's ssl, always verifying against the CA the operator publishes.

Tests connect to 127.0.0.1 but must check the name a cluster client would use (``N.NS.svc``), so the TLS
server name is given separately from the address.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509


def tls_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only ``ca_pem`` and checks host names (never relaxed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


class VerifiedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the certificate against a separately given server name."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, server_hostname: str, timeout: float = 10):
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._ctx = ctx
        self._server_hostname = server_hostname

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._server_hostname)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    address: str,
    ca_pem: bytes,
    server_hostname: str,
    method: str,
    path: str,
    *,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    host, port = address.rsplit(":", 1)
    conn = VerifiedHTTPSConnection(host, int(port), tls_context(ca_pem), server_hostname)
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def peer_certificate(address: str, ca_pem: bytes, server_hostname: str) -> tuple[x509.Certificate, str]:
    """The leaf certificate served after a verified handshake, and the negotiated TLS version."""
    host, port = address.rsplit(":", 1)
    ctx = tls_context(ca_pem)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der), str(tls.version())


def san_names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """DNS names and IP addresses of a certificate's subjectAltName."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def plain_http_exchange(address: str, path: str = "/v2/") -> bytes:
    """Send one cleartext HTTP request to the port and return whatever comes back (for refusal checks)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
