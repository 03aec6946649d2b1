"""hpatk.core: registry, hookspecs, data readers, HDF5 cache, training engine, metrics.

Importing this package is cheap (no torch): heavy modules are imported where used.
"""

from hpatk.core.base import Enhancer, Synthesizer
from hpatk.core.errors import DataError, HpatkError, RegistryError
from hpatk.core.hookspecs import hookimpl, hookspec
from hpatk.core.registry import get_registry, reset_registry
from hpatk.core.version import __version__

__all__ = [
    "DataError",
    "Enhancer",
    "HpatkError",
    "RegistryError",
    "Synthesizer",
    "__version__",
    "get_registry",
    "hookimpl",
    "hookspec",
    "reset_registry",
]
