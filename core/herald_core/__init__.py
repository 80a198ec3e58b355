"""herald_core: the SPIFFE model shared by herald's server, agent and operator."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("herald")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
