"""medray: train, tune and serve medical AI models on a Ray cluster."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
