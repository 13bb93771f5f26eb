"""The reloadable state a request needs: config, htpasswd table and signer.

Each accessor stats its files (see :mod:`.reload`), so edits to the mounted ConfigMap or Secrets
apply to the next request without a restart. The config also says *which* files to use and how
(the signing algorithm). When that changes, the value is rebuilt from the new files; if they are
unusable (say the ConfigMap switched to RS256 before the Secret with the RSA key arrived), the
previous value stays in use and the rebuild is retried once those files change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from .config import Algorithm, ServiceConfig, load_config
from .htpasswd import Htpasswd, load_htpasswd
from .reload import FileBacked, Identity, file_identity
from .signing import Signer

log = logging.getLogger(__name__)
T = TypeVar("T")
Spec = tuple[tuple[str, ...], str]  # (files, option)


class _Following(Generic[T]):
    """A file-backed value whose files and load option come from the config."""

    def __init__(self, spec: Spec, build: Callable[[Spec], FileBacked[T]], name: str) -> None:
        self._spec = spec
        self._build = build
        self._name = name
        self._current = build(spec)  # at start, failure is fatal
        self._failed: tuple[Spec, Identity] | None = None

    def get(self, spec: Spec) -> T:
        if spec != self._spec:
            attempt = (spec, file_identity(spec[0]))
            if attempt != self._failed:
                try:
                    self._current, self._spec, self._failed = self._build(spec), spec, None
                except Exception as exc:  # noqa: BLE001 - keep serving with the previous files
                    self._failed = attempt
                    log.error("the config's %s is unusable, keeping the previous one: %s", self._name, exc)
        return self._current.get()


def _htpasswd_spec(config: ServiceConfig) -> Spec:
    return (config.htpasswd_path,), ""


def _build_htpasswd(spec: Spec) -> FileBacked[Htpasswd]:
    (path,), _ = spec
    return FileBacked([path], lambda: load_htpasswd(path), "htpasswd")


def _signer_spec(config: ServiceConfig) -> Spec:
    return (config.signing_key_path, config.signing_cert_path), config.algorithm


def _build_signer(spec: Spec) -> FileBacked[Signer]:
    (key, cert), option = spec
    algorithm = cast(Algorithm, option)  # validated by parse_config
    return FileBacked([key, cert], lambda: Signer.from_files(algorithm, key, cert), "signing key")


class Runtime:
    """Built once at start; raises if any file is missing or invalid then."""

    def __init__(self, config_path: str) -> None:
        self._config = FileBacked([config_path], lambda: load_config(config_path), "config")
        config = self._config.get()
        self._htpasswd = _Following(_htpasswd_spec(config), _build_htpasswd, "htpasswd file")
        self._signer = _Following(_signer_spec(config), _build_signer, "signing key")

    def config(self) -> ServiceConfig:
        return self._config.get()

    def htpasswd(self) -> Htpasswd:
        return self._htpasswd.get(_htpasswd_spec(self.config()))

    def signer(self) -> Signer:
        return self._signer.get(_signer_spec(self.config()))
