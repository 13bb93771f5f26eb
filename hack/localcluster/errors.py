"""What can go wrong starting or using the local control plane."""


class ClusterError(RuntimeError):
    """The control plane could not be started, or misbehaved."""


class BinariesMissing(ClusterError):
    """The control-plane binaries have not been built."""


class PortInUse(ClusterError):
    """A port the control plane needs is taken."""
