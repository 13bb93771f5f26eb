"""Builders shared by the pure unit tests: spec -> material -> rendered objects, without a cluster."""

import base64
from typing import Any

from registry_operator import material, render, spec

OWNER = {"metadata": {"name": "reg", "namespace": "ns", "uid": "0000-1111"}}


def decode_secrets(objects: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    """What `observe` would read back after these objects were applied."""
    return {
        o["metadata"]["name"]: {k: base64.b64decode(v) for k, v in o["data"].items()}
        for o in objects
        if o["kind"] == "Secret"
    }


class Pipeline:
    """spec -> material -> objects."""

    def run(self, raw: dict[str, Any], observed: dict[str, Any] | None = None):
        s = spec.parse("reg", "ns", raw)
        mat = material.decide(s, observed or {})
        return s, mat, render.desired(s, mat, OWNER, "registry-operator:test")


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}
