"""Container images built on this machine, without Docker, a registry on the internet, or a hand-written OCI layout.

Each image is a root file system assembled from Debian packages and hack/build's binaries, packed as one
reproducible layer (sorted entries, zero mtimes, root-owned), appended to an empty OCI base with ``crane append``
and given its entrypoint, user and environment with ``crane mutate``, through a throwaway distribution registry on
127.0.0.1 (crane edits images in a registry). The result is an image tarball per image in ``.cache/images/``,
tagged with exactly the name pods use (``registry:3.1.2``, ``registry-operator:0.1.0``...), which the real node
imports into containerd: nothing is ever pulled.

An image is rebuilt only when its inputs (file contents and image config) changed: a second build is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import REPO, bin_dir, read_versions
from .errors import ClusterError
from .poll import wait_until
from .ports import pick_free_ports
from .processes import terminate

IMAGE_DIR = REPO / ".cache" / "images"
OPERATOR_IMAGE = "registry-operator:0.1.0"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE = "registry-operator.local/busybox:1"
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
DEBIAN_REGISTRY = Path("/usr/bin/docker-registry")
BUSYBOX = Path("/usr/bin/busybox")
# Applets the test and demo pods use (busybox-static's wget crashes: probe with httpGet instead).
BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "ls", "true", "nc", "nslookup", "env", "id", "date")


@dataclass(frozen=True)
class Image:
    """One image: its name as pods use it, how to fill its root file system, and its config."""

    ref: str
    fill: Callable[[Path], None]
    inputs: Callable[[], list[Path]]  # files whose contents decide whether to rebuild
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.ref.replace("/", "_").replace(":", "_") + ".tar"


# ------------------------------------------------------------------------------------------------ root file systems


def _copy(src: Path, root: Path, dest: str | None = None) -> None:
    """Copy a file into the root file system at ``dest`` (default: its own path)."""
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target, follow_symlinks=True)


def _shared_libraries(*objects: Path) -> set[Path]:
    """The shared libraries (and the ELF interpreter) these programs and extension modules load, by ldd."""
    libs: set[Path] = set()
    for obj in objects:
        out = subprocess.run(["ldd", str(obj)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                libs.add(Path(path))
    return libs


def _base_dirs(root: Path) -> None:
    """What every image has: /tmp (sticky), /etc/passwd with the pods' user, PATH directories."""
    for d in ("bin", "etc", "usr/bin", "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nregistry:x:1000:1000::/tmp:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nregistry:x:1000:\n")


def _fill_pause(root: Path) -> None:
    _base_dirs(root)
    _copy(BUSYBOX, root, "/bin/busybox")


def _fill_busybox(root: Path) -> None:
    _fill_pause(root)
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")


def _distribution_3() -> Path:
    return bin_dir() / f"distribution-{read_versions()['DISTRIBUTION_VERSION']}" / "registry"


def _fill_registry_3(root: Path) -> None:
    _base_dirs(root)
    _copy(_distribution_3(), root, "/bin/registry")
    (root / "etc/distribution").mkdir(parents=True)
    (root / "var/lib/registry").mkdir(parents=True)


def _fill_registry_2(root: Path) -> None:
    """Debian's distribution 2.8 is dynamically linked: its libc and ELF interpreter come along."""
    _base_dirs(root)
    _copy(DEBIAN_REGISTRY, root, "/bin/registry")
    for lib in _shared_libraries(DEBIAN_REGISTRY):
        _copy(lib, root)
    (root / "etc/docker/registry").mkdir(parents=True)
    (root / "var/lib/registry").mkdir(parents=True)


def _operator_site_packages() -> Path:
    """operator/requirements.txt installed for Debian's Python 3.11 (what the Dockerfile's pip install does),
    cached by the requirements' hash; pip runs from a virtualenv over that same interpreter."""
    requirements = REPO / "operator" / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    site = IMAGE_DIR / "work" / f"site-packages-{digest}"
    if site.is_dir():
        return site
    pip_venv = IMAGE_DIR / "work" / "pip-venv"
    if not (pip_venv / "bin" / "pip").exists():
        subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", str(pip_venv)], check=True)
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [str(pip_venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         "--no-compile", "--target", str(partial), "-r", str(requirements)],
        check=True,
    )  # fmt: skip
    partial.rename(site)
    return site


def _fill_operator(root: Path) -> None:
    """Debian's Python 3.11 with the operator's pinned dependencies and the package itself."""
    _base_dirs(root)
    stdlib = Path("/usr/lib/python3.11")
    skip = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "config-3.11-x86_64-linux-gnu"}
    shutil.copytree(
        stdlib,
        root / stdlib.relative_to("/"),
        ignore=lambda d, names: skip & set(names) if d == str(stdlib) else set(),
        symlinks=True,
    )
    _copy(DEBIAN_PYTHON, root, "/usr/bin/python3.11")
    for name in ("python", "python3"):
        (root / "usr/bin" / name).symlink_to("python3.11")
    dist = root / "usr/lib/python3/dist-packages"
    shutil.copytree(_operator_site_packages(), dist, symlinks=True)
    shutil.copytree(REPO / "operator" / "registry_operator", dist / "registry_operator",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    extensions = [p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for lib in _shared_libraries(DEBIAN_PYTHON, *extensions):
        if not (root / str(lib).lstrip("/")).exists():
            _copy(lib, root)


def _tree_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


IMAGES: list[Image] = [
    Image(PAUSE_IMAGE, _fill_pause, lambda: [BUSYBOX], entrypoint=["/bin/busybox", "sleep", "2147483647"]),
    Image(BUSYBOX_IMAGE, _fill_busybox, lambda: [BUSYBOX], entrypoint=["/bin/sh"], env={"PATH": "/bin"}),  # fmt: skip
    Image(
        "registry:3.1.2",
        _fill_registry_3,
        lambda: [_distribution_3()],
        entrypoint=["registry", "serve"],
        cmd=["/etc/distribution/config.yml"],
        env={"PATH": "/bin:/usr/bin"},
    ),  # fmt: skip
    Image(
        "registry:2.8.3",
        _fill_registry_2,
        lambda: [DEBIAN_REGISTRY],
        entrypoint=["registry", "serve"],
        cmd=["/etc/docker/registry/config.yml"],
        env={"PATH": "/bin:/usr/bin"},
    ),  # fmt: skip
    Image(
        OPERATOR_IMAGE,
        _fill_operator,
        lambda: [
            DEBIAN_PYTHON,
            REPO / "operator" / "requirements.txt",
            *_tree_files(REPO / "operator" / "registry_operator"),
        ],
        entrypoint=["python", "-m", "registry_operator"],
        user="1000:1000",
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
    ),
]


# ------------------------------------------------------------------------------------------------ building


def _layer(root: Path, out: Path) -> None:
    """A reproducible layer tarball: sorted paths, mtime 0, owner root, modes kept."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=normalize)


def _fingerprint(image: Image, crane: Path) -> str:
    h = hashlib.sha256()
    config = [image.ref, image.entrypoint, image.cmd, image.user, sorted(image.env.items()), str(crane)]
    h.update(json.dumps(config).encode())
    h.update(Path(__file__).read_bytes())  # how images are made is an input too
    for path in image.inputs():
        h.update(str(path).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@contextmanager
def _staging_registry(registry: Path, work: Path) -> Iterator[str]:
    """A plain-HTTP distribution registry on 127.0.0.1 for crane to edit images in; stopped afterwards."""
    port = pick_free_ports(["staging"])["staging"]
    config = work / "staging.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(work / "staging")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OTEL_TRACES_EXPORTER": "none"}
    log = open(work / "staging.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(registry), "serve", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import urllib.request

        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200,
                   30, "the staging registry", error=ClusterError)  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        terminate(proc.pid, popen=proc)
        log.close()


def _crane(crane: Path, *args: str) -> str:
    res = subprocess.run([str(crane), *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise ClusterError(f"crane {' '.join(args[:2])} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def build(
    images: list[Image] | None = None, out_dir: Path = IMAGE_DIR, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Build (or reuse) every image; returns image name -> tarball."""
    crane = bin_dir() / f"crane-{read_versions()['CRANE_VERSION']}" / "crane"
    registry = _distribution_3()
    for needed, how in ((crane, "hack/build crane"), (registry, "hack/build registry"), (BUSYBOX, "apt busybox-static"),
                        (DEBIAN_PYTHON, "apt python3.11"), (DEBIAN_REGISTRY, "apt docker-registry")):  # fmt: skip
        if not needed.exists():
            raise ClusterError(f"building images needs {needed}: {how} (hack/install-deps)")
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    todo: list[tuple[Image, str]] = []
    for image in images or IMAGES:
        tar = out_dir / image.filename
        stamp = tar.with_suffix(".inputs")
        fingerprint = _fingerprint(image, crane)
        result[image.ref] = tar
        if tar.exists() and stamp.exists() and stamp.read_text() == fingerprint:
            continue
        todo.append((image, fingerprint))
    if not todo:
        log(f"images: all {len(result)} up to date in {out_dir}")
        return result
    with _staging_registry(registry, work) as staging:
        for image, fingerprint in todo:
            started = time.monotonic()
            tar = out_dir / image.filename
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                root = Path(tmp) / "rootfs"
                root.mkdir()
                image.fill(root)
                _layer(root, Path(tmp) / "layer.tar")
                staged = f"{staging}/{image.filename.removesuffix('.tar')}:build"
                _crane(crane, "append", "--oci-empty-base", "-f", str(Path(tmp) / "layer.tar"), "-t", staged)
                args = ["mutate", staged, "--set-platform", "linux/amd64", "-t", image.ref, "-o", str(tar)]
                if image.entrypoint:
                    args.append("--entrypoint=" + ",".join(image.entrypoint))
                if image.cmd:
                    args.append("--cmd=" + ",".join(image.cmd))
                if image.user:
                    args += ["--user", image.user]
                for key, value in image.env.items():
                    args += ["--env", f"{key}={value}"]
                _crane(crane, *args)
            tar.with_suffix(".inputs").write_text(fingerprint)
            log(
                f"images: built {image.ref} in {time.monotonic() - started:.1f}s ({tar.stat().st_size / 2**20:.1f} MiB)"
            )
    return result


def main() -> int:
    """``hack/images``: build every image, print where they are."""
    try:
        built = build(log=lambda msg: print(msg, file=sys.stderr))
    except (ClusterError, subprocess.CalledProcessError) as e:
        print(f"hack/images: ERROR: {e}", file=sys.stderr)
        return 1
    for ref, tar in built.items():
        print(f"{ref}\t{tar}")
    return 0
