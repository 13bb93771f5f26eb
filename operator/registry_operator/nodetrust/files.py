"""What the node agent writes under containerd's certs.d directory, decided by pure functions.

One directory per host:port (the name containerd looks up), holding `hosts.toml` (the host, pull and resolve
only, and `ca = "ca.crt"`, which containerd resolves next to hosts.toml, so the file says the same wherever
the directory is mounted), `ca.crt` (when the Registry has a CA) and `MARKER`, which names the ConfigMap the
directory came from. The marker is what makes a directory the agent's: one without it (set up by hand, by
another tool) is never written or removed, even when a Registry publishes the same host.

`desired` (ConfigMaps -> files) and `plan` (desired vs. on disk -> changes) are pure; `read` and `apply` touch
the disk, each file replaced atomically (written aside, then renamed), so containerd never reads half a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..names import ANNOTATION_REGISTRY
from . import DATA_CA, DATA_HOSTS, DATA_MIRROR_OF, seniority

MARKER = ".registry-operator"
HOSTS_TOML = "hosts.toml"
CA = "ca.crt"
Files = dict[str, bytes]  # file name -> content, within one host's directory

# host:port as a directory name: a DNS name or IPv4 address, or a bracketed IPv6 address, and a port. Nothing
# that could climb out of certs.d (no '/', no leading '.').
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}")
_UPSTREAM = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)(:[0-9]{1,5})?")  # port optional


def hosts_toml(host: str, registry: str, ca: bool) -> str:
    """containerd's hosts.toml for `host`: HTTPS, pull and resolve only, our CA when there is one."""
    lines = [
        f"# Written by registry-operator's node agent for Registry {registry}; removed when it goes.",
        f'server = "https://{host}"',
        "",
        f'[host."https://{host}"]',
        '  capabilities = ["pull", "resolve"]',
    ]
    if ca:
        lines.append(f'  ca = "{CA}"')
    return "\n".join(lines) + "\n"


def cluster_only(host: str) -> bool:
    """Whether `host` is a Service name (`<name>.<namespace>.svc`, with or without the cluster domain), which
    a node's resolver does not know: containerd asking for one waits for the node's DNS to say no."""
    return host.rpartition(":")[0].split(".")[2:3] == ["svc"]


def mirror_toml(upstream: str, mirrors: list[str], registry: str, ca: bool) -> str:
    """containerd's hosts.toml for a pull-through cache's `upstream`: the cache's hosts first, in order (names
    a node can resolve before cluster-only Service names), then the upstream itself when none answers. The CA
    in this directory is the cache's: the upstream, reached as a fallback, is checked against the node's
    roots."""
    lines = [f"# Written by registry-operator's node agent: Registry {registry} caches {upstream}.",
             f'server = "https://{upstream}"']
    for host in sorted(mirrors, key=cluster_only):
        lines += ["", f'[host."https://{host}"]', '  capabilities = ["pull", "resolve"]']
        if ca:
            lines.append(f'  ca = "{CA}"')
    return "\n".join(lines) + "\n"


def desired(config_maps: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Files], list[str]]:
    """(host -> the files of its directory, problems) for the node-trust ConfigMaps. A host two ConfigMaps
    publish goes to the older one (`seniority`; the operator leaves it out of the newer, so this happens only
    for a moment); that, and a name that cannot be a directory, is said in problems."""
    out: dict[str, Files] = {}
    problems = []
    for cm in sorted(config_maps, key=seniority):
        name = cm["metadata"]["name"]
        data = cm.get("data") or {}
        registry = (cm["metadata"].get("annotations") or {}).get(ANNOTATION_REGISTRY, name)
        ca = data.get(DATA_CA)
        for host in (data.get(DATA_HOSTS) or "").split():
            if not _HOST.fullmatch(host):
                problems.append(f"ConfigMap {name}: {host!r} is not a host:port, skipped")
                continue
            if host in out:
                problems.append(f"ConfigMap {name}: {host} is already published by "
                                f"{out[host][MARKER].decode().strip()}, skipped")
                continue
            files = {HOSTS_TOML: hosts_toml(host, registry, bool(ca)).encode(), MARKER: f"{name}\n".encode()}
            if ca:
                files[CA] = ca.encode()
            out[host] = files
        upstream = data.get(DATA_MIRROR_OF)
        marker = f"{name}\n".encode()
        mirrors = [h for h in (data.get(DATA_HOSTS) or "").split() if h in out and out[h][MARKER] == marker]
        if upstream and mirrors:
            if not _UPSTREAM.fullmatch(upstream):
                problems.append(f"ConfigMap {name}: mirror of {upstream!r}, which is not a host[:port], skipped")
            elif upstream in out:
                problems.append(f"ConfigMap {name}: {upstream} is already published by "
                                f"{out[upstream][MARKER].decode().strip()}, its mirror skipped")
            else:
                files = {HOSTS_TOML: mirror_toml(upstream, mirrors, registry, bool(ca)).encode(), MARKER: marker}
                if ca:
                    files[CA] = ca.encode()
                out[upstream] = files
    return out, problems


@dataclass
class Plan:
    write: dict[str, Files] = field(default_factory=dict)  # host -> every file its directory must hold
    remove: list[str] = field(default_factory=list)  # our directories no ConfigMap publishes any more
    foreign: list[str] = field(default_factory=list)  # published, but the directory is not ours: left alone

    def __bool__(self) -> bool:
        return bool(self.write or self.remove)


def plan(want: Mapping[str, Files], have: Mapping[str, Files | None]) -> Plan:
    """The changes that make certs.d say `want`. `have`: host -> the files of our directory there, or None
    for a directory without our marker."""
    out = Plan()
    for host, files in sorted(want.items()):
        current = have.get(host, {})
        if current is None:
            out.foreign.append(host)
        elif current != files:
            out.write[host] = files
    out.remove = sorted(h for h, files in have.items() if files is not None and h not in want)
    return out


def read(certs_dir: Path) -> dict[str, Files | None]:
    """host -> the files of each directory under `certs_dir` (None when it lacks our marker)."""
    out: dict[str, Files | None] = {}
    if not certs_dir.is_dir():
        return out
    for entry in certs_dir.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            continue
        if not (entry / MARKER).is_file():
            out[entry.name] = None
            continue
        out[entry.name] = {f.name: f.read_bytes() for f in entry.iterdir() if f.is_file() and not f.is_symlink()}
    return out


def _replace(path: Path, content: bytes) -> None:
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_bytes(content)
    os.chmod(aside, 0o644)
    os.replace(aside, path)


def apply(certs_dir: Path, changes: Plan) -> None:
    """Carry out `changes`. The marker is written first (a directory the agent made is always known to be its
    own), hosts.toml last on write and first on removal (containerd uses a directory only through it)."""
    for host, files in changes.write.items():
        directory = certs_dir / host
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        order = [MARKER, *sorted(set(files) - {MARKER, HOSTS_TOML}), HOSTS_TOML]
        for name in order:
            if name in files:
                _replace(directory / name, files[name])
        for stale in directory.iterdir():
            if stale.name not in files and stale.is_file():
                stale.unlink()
    for host in changes.remove:
        directory = certs_dir / host
        for name in [HOSTS_TOML, *sorted(f.name for f in directory.iterdir() if f.name not in (HOSTS_TOML, MARKER)),
                     MARKER]:
            (directory / name).unlink(missing_ok=True)
        directory.rmdir()
