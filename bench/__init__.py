"""Benchmarks of the registry operator on the local control plane: `python -m bench [--quick]`."""

from . import paths  # noqa: F401  (sys.path for hack/, tests.support and the operator package)
