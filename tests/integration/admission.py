"""A real validating admission webhook, to make the real API server refuse writes on demand.

The API server calls it for every write of the selected kind in one namespace and, while `refuse` is set,
answers the client with that HTTP status (409, 429, 500, 503...): the operator sees exactly what a busy or
failing control plane returns, from the real server, with nothing mocked on the client side.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from registry_operator import pki


class Webhook:
    def __init__(self) -> None:
        self.refuse: int | None = None  # HTTP status to answer with; None: allow
        self.seen = 0  # admission requests received
        self.ca = pki.issue_ca("admission test CA")
        self._server = pki.issue_server(self.ca, ["127.0.0.1"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _review(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.seen += 1
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": self.refuse is None}
        if self.refuse is not None:
            response["status"] = {"code": self.refuse, "message": f"injected by the test webhook ({self.refuse})"}
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": response})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/", self._review)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_bytes(self._server.cert_pem)
            key.write_bytes(self._server.key_pem)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def configuration(self, name: str, namespace: str, resources: list[str]) -> str:
        """The ValidatingWebhookConfiguration sending writes of `resources` in `namespace` here."""
        return json.dumps({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "refuse.tests.registry.operator.dev",
                "clientConfig": {"url": f"https://127.0.0.1:{self.port}/",
                                 "caBundle": base64.b64encode(self.ca.cert_pem).decode()},
                "rules": [{"apiGroups": ["", "apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                           "resources": resources, "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
            }],
        })


@contextmanager
def refusing_webhook(cluster: Any, namespace: str, resources: list[str]) -> Iterator[Webhook]:
    """A running webhook registered for `resources` in `namespace`; removed afterwards."""
    hook = Webhook()
    hook.start()
    name = f"refuse-{namespace}"
    cluster.apply(hook.configuration(name, namespace, resources))
    try:
        yield hook
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False)
        hook.stop()
