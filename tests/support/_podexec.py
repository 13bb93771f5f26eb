"""Container-ish exec: a private mount namespace with the pod's volumes at their real paths, then exec.

Run as a script (``python _podexec.py SPEC.json``) by podrunner, never imported: after
``unshare(CLONE_NEWNS)`` this process bind-mounts each materialized volume onto its absolute mountPath, so
the program reads exactly the paths the rendered config names (no path rewriting), and then replaces itself
with the program, so the PID that podrunner holds is the program's own PID.

Mount points that do not exist on this machine (``/etc/distribution``, ``/etc/registry/tls``) are created
inside a private overlay of their nearest existing ancestor, so the host file system is never modified.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} -> {target}",
    )


def _ensure_mount_point(target: str, is_dir: bool, scratch: str, overlaid: list[str]) -> None:
    """Create a missing mount point inside a private overlay of its nearest existing ancestor."""
    if os.path.lexists(target):
        return
    ancestor = os.path.dirname(target)
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor)
    if ancestor == "/":
        raise RuntimeError(f"refusing to overlay / for mount point {target}")
    if not any(ancestor == o or ancestor.startswith(o + "/") for o in overlaid):
        layer = os.path.join(scratch, f"overlay-{len(overlaid)}")
        os.makedirs(f"{layer}/upper")
        os.makedirs(f"{layer}/work")
        _mount(
            "overlay",
            ancestor,
            "overlay",
            0,
            f"lowerdir={ancestor},upperdir={layer}/upper,workdir={layer}/work",
        )
        overlaid.append(ancestor)
    if is_dir:
        os.makedirs(target)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "x").close()


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)

    mounts = spec["mounts"]
    # Pin every source before mounting anything: a later mount (an emptyDir on /tmp) may hide the path.
    sources = [os.open(m["source"], os.O_PATH) for m in mounts]
    overlaid: list[str] = []
    for m in mounts:
        _ensure_mount_point(m["target"], os.path.isdir(m["source"]), spec["scratch"], overlaid)
    for m, fd in zip(mounts, sources, strict=True):
        _mount(f"/proc/self/fd/{fd}", m["target"], None, MS_BIND)
        if m["readOnly"]:
            _mount(None, m["target"], None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    if spec["readOnlyRootFilesystem"]:
        for path in ["/", *overlaid]:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)

    if spec["gid"] is not None:
        os.setgroups(spec["supplementalGroups"])
        os.setgid(spec["gid"])
    if spec["uid"] is not None:
        os.setuid(spec["uid"])
    if spec["cwd"]:
        os.chdir(spec["cwd"])
    os.execve(spec["program"], spec["argv"], spec["env"])


if __name__ == "__main__":
    main()
