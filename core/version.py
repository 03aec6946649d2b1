"""The installed hpatk version."""

import importlib.metadata as _md

try:
    __version__ = _md.version("hpatk")
except _md.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
