"""The reloadable state a request needs: config, htpasswd table and signer.

Each accessor stats its files (see :mod:`.reload`), so edits to the mounted ConfigMap or Secrets
apply to the next request without a restart. When a reloaded config points at different
htpasswd or signing paths, new watchers are built; if those files cannot be loaded the previous
ones stay in use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from .config import ServiceConfig, load_config
from .htpasswd import Htpasswd, load_htpasswd
from .reload import FileBacked
from .signing import Signer

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    """Built once at start; raises if any file is missing or invalid then."""

    def __init__(self, config_path: str) -> None:
        self._config = FileBacked([config_path], lambda: load_config(config_path), "config")
        self._wired = self._config.get()
        self._htpasswd = self._htpasswd_for(self._wired)
        self._signer = self._signer_for(self._wired)

    @staticmethod
    def _htpasswd_for(config: ServiceConfig) -> FileBacked[Htpasswd]:
        path = config.htpasswd_path
        return FileBacked([path], lambda: load_htpasswd(path), "htpasswd")

    @staticmethod
    def _signer_for(config: ServiceConfig) -> FileBacked[Signer]:
        alg, key, cert = config.algorithm, config.signing_key_path, config.signing_cert_path
        return FileBacked([key, cert], lambda: Signer.from_files(alg, key, cert), "signing key")

    @staticmethod
    def _rewatch(
        current: FileBacked[T], build: Callable[[ServiceConfig], FileBacked[T]], config: ServiceConfig
    ) -> FileBacked[T]:
        try:
            return build(config)
        except Exception as exc:  # noqa: BLE001 - keep serving with the previous files
            log.error("config points at unusable files, keeping the previous ones: %s", exc)
            return current

    def config(self) -> ServiceConfig:
        """The current config, rewiring file watchers when paths or the algorithm changed."""
        config = self._config.get()
        if config is self._wired:
            return config
        previous, self._wired = self._wired, config
        if previous.htpasswd_path != config.htpasswd_path:
            self._htpasswd = self._rewatch(self._htpasswd, self._htpasswd_for, config)
        signer_fields = ("signing_key_path", "signing_cert_path", "algorithm")
        if any(getattr(previous, f) != getattr(config, f) for f in signer_fields):
            self._signer = self._rewatch(self._signer, self._signer_for, config)
        return config

    def htpasswd(self) -> Htpasswd:
        return self._htpasswd.get()

    def signer(self) -> Signer:
        return self._signer.get()
