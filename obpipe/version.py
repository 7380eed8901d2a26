"""The installed package's version (a leaf module: every module that records it imports
it from here, not from the package ``__init__``, which imports the accessor)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("obpipe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
