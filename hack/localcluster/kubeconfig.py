"""Kubeconfig files: built as dicts, written readable by the owner only (they carry keys and tokens)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def dump_yaml(obj: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(obj, sort_keys=False)
    except ImportError:  # JSON is YAML too
        return json.dumps(obj, indent=2) + "\n"


def kubeconfig_dict(server: str, ca_pem_b64: str, user: dict[str, str], context: str, user_name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": ca_pem_b64}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user_name}}],
        "current-context": context,
    }


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
