"""What bringing up a real node changes on the host, recorded before it is changed, so that ``down`` undoes
exactly that: iptables rules and chains that were not there before (ours, the kubelet's, kube-proxy's,
kube-router's), the ipsets kube-router makes, sysctls (the CNI bridge plugin, the kubelet and netpol.py set
some), bridges, routes, mounts, network namespaces, cgroups and the /var paths the kubelet, containerd and CNI
create wherever they are told to keep their state.

The record (``JOURNAL``) is machine-wide, in /run (gone at reboot, like the changes themselves): there is one real
node per machine (fixed bridge names, node IP, kubelet port), and its changes must be undone even when the
cluster's work directory has vanished (pytest rotates its temporary directories). It also names the node's
processes, so that a later ``up`` or ``down`` can stop them by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ClusterError

SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "vm/overcommit_memory", "kernel/panic",
           "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")  # fmt: skip
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
JOURNAL = Path("/run/registry-operator/real-node.json")
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd",
              "/var/run/netns", "/run/netns", "/etc/cni", "/opt/cni", "/var/lib/containerd",
              "/etc/containerd/certs.d")  # fmt: skip
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


@dataclass
class HostChanges:
    """The journal: saved to ``path`` after every change it records."""

    path: Path
    owner: str = ""  # the work directory of the cluster whose node made the changes
    processes: dict[str, list[int]] = field(default_factory=dict)  # name -> [pid, start time]
    sysctls: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    iptables: dict[str, list[str]] = field(default_factory=dict)  # "iptables:nat" -> its rules before
    links: list[str] = field(default_factory=list)
    mounts: list[int] = field(default_factory=list)  # mount IDs: found again even if their path was renamed
    routes: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)  # network namespaces that existed before
    absent_cgroups: list[str] = field(default_factory=list)
    ipsets: list[str] = field(default_factory=list)  # the sets that existed before (kube-router makes some)

    @classmethod
    def load(cls, path: Path) -> HostChanges | None:
        try:
            return cls(path=path, **json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        data = asdict(self)
        data.pop("path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=2) + "\n")

    def snapshot(self) -> None:
        """The state of everything the node's programs may change without asking us."""
        self.sysctls = {
            n: (Path("/proc/sys") / n).read_text().strip() for n in SYSCTLS if (Path("/proc/sys") / n).exists()
        }
        self.absent_paths = [p for p in HOST_PATHS if not os.path.lexists(p)]
        self.iptables = {f"{tool}:{table}": _iptables_rules(tool, table) for tool in IPTABLES for table in TABLES}
        self.netns = _netns()
        self.absent_cgroups = [str(d / "kubepods") for d in _cgroup_hierarchies() if not (d / "kubepods").exists()]
        self.ipsets = _ipsets()
        self.save()

    def add_process(self, name: str, pid: int, starttime: int) -> None:
        self.processes[name] = [pid, starttime]
        self.save()

    def add_mount(self, path: str) -> None:
        """Record the mount at ``path`` (made just before) by its mount ID."""
        self.mounts.append([m for m, _, point in _mounts() if point == path][-1])  # the topmost there
        self.save()

    def add_link(self, name: str) -> None:
        self.links.append(name)
        self.save()

    def add_route(self, spec: str) -> None:
        self.routes.append(spec)
        self.save()

    def undo(self, log: Callable[[str], None]) -> None:
        """Undo everything recorded, newest first; what is already gone is skipped. Run it once the node's
        processes are stopped. The journal is deleted afterwards."""
        for mount_id in reversed(self.mounts):
            _unmount_tree(mount_id)
        for spec in reversed(self.routes):
            run("ip", "route", "del", *spec.split(), check=False)
        for key, before in self.iptables.items():
            _iptables_restore_to(*key.split(":"), before)
        for name in sorted(set(_ipsets()) - set(self.ipsets)):  # no rule refers to them any more
            run("ipset", "destroy", name, check=False)
        for ns in sorted(set(_netns()) - set(self.netns)):
            run("ip", "netns", "delete", ns, check=False)
        for name in reversed(self.links):
            run("ip", "link", "del", name, check=False)
        for name, value in self.sysctls.items():
            (Path("/proc/sys") / name).write_text(value)
        for cgroup in self.absent_cgroups:
            _rmdir_tree(Path(cgroup))
        for p in self.absent_paths:
            unmount_under(Path(p))
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        self.path.unlink(missing_ok=True)
        log(
            "host restored: iptables rules and chains, ipsets, routes, bridges, network namespaces, sysctls, cgroups, "
            "paths"
        )


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A host command (ip, iptables, ctr...), with the system PATH whatever the caller's is."""
    env = {**os.environ, "PATH": SYSTEM_PATH}
    res = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise ClusterError(f"`{shlex.join(args)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _iptables_rules(tool: str, table: str) -> list[str]:
    """Chain declarations and rules of one table, as iptables-save prints them."""
    res = run(f"{tool}-save", "-t", table, check=False)
    return [line for line in res.stdout.splitlines() if line.startswith((":", "-A "))]


def _iptables_restore_to(tool: str, table: str, before: list[str]) -> None:
    """Delete the rules and chains added since ``before``; rules others added meanwhile are theirs and stay
    unless they live in a chain we added."""
    old = set(before)
    now = _iptables_rules(tool, table)
    for line in now:
        if line.startswith("-A ") and line not in old:
            run(tool, "-t", table, "-D", *shlex.split(line[3:]), check=False)
    old_chains = {line.split()[0] for line in before if line.startswith(":")}
    new_chains = [line.split()[0][1:] for line in now if line.startswith(":") and line.split()[0] not in old_chains]
    for chain in new_chains:
        run(tool, "-t", table, "-F", chain, check=False)
    for chain in new_chains:
        run(tool, "-t", table, "-X", chain, check=False)


def _ipsets() -> list[str]:
    """Every ipset of the machine (none when ipset is not installed)."""
    if not shutil.which("ipset", path=SYSTEM_PATH):
        return []
    return sorted(run("ipset", "list", "-n", check=False).stdout.split())


def _netns() -> list[str]:
    return sorted(line.split()[0] for line in run("ip", "netns", "list", check=False).stdout.splitlines() if line)


def _cgroup_hierarchies() -> list[Path]:
    """The cgroup v1 controller hierarchies, or the v2 root."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return sorted(d for d in CGROUP_ROOT.iterdir() if d.is_dir() and not d.is_symlink())


def _rmdir_tree(path: Path) -> None:
    """Remove a cgroup directory tree, children first (a cgroup's files go with its directory)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _mounts() -> list[tuple[int, int, str]]:
    """(mount ID, parent ID, mount point) of every mount of this mount namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        out.append((int(fields[0]), int(fields[1]), fields[4].replace("\\040", " ")))
    return out


def _unmount_tree(mount_id: int) -> None:
    """Lazily unmount a mount and every mount below it, deepest first, wherever they are now."""
    mounts = _mounts()
    tree, grew = {mount_id}, True
    while grew:
        children = {m for m, parent, _ in mounts if parent in tree} - tree
        tree |= children
        grew = bool(children)
    for point in sorted((p for m, _, p in mounts if m in tree), key=len, reverse=True):
        run("umount", "-l", point, check=False)


def unmount_under(path: Path) -> None:
    """Lazily unmount every mount at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    points = [p for _, _, p in _mounts() if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(points, key=len, reverse=True):
        run("umount", "-l", point, check=False)
