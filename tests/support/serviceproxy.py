"""A loopback TCP forwarder standing in for a Service: clients on this machine connect to ``127.0.0.1:<port>``,
which every certificate of the e2e suite names, and reach whatever backs it now.

Each connection is forwarded byte for byte (TLS is end to end: the proxy never sees plaintext). Its target is
a pod run by podrunner (a loopback port), or on the real node a Service's ClusterIP (kube-proxy carries it on)
or one pod's IP.
"""

from __future__ import annotations

import socket
import threading


class ServiceProxy:
    """A loopback TCP forwarder standing in for a ClusterIP Service: listens now, routes to ``target`` later."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        with client:
            target = self.target
            if target is None:
                return  # no ready endpoint yet: closed at once, like a Service without endpoints
            try:
                upstream = socket.create_connection(target, timeout=10)
            except OSError:
                return
            with upstream:
                upstream.settimeout(None)
                back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
                back.start()
                self._pipe(client, upstream)
                back.join()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        """Copy until EOF, then pass the half-close on (TLS close_notify and HTTP keep-alive rely on it)."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
