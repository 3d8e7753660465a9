"""The package's version (part of the contract), read from its installed metadata.

Every layer may import this module; it imports nothing of the package, so nothing inside
needs the package root for `__version__`. A helper, not a stage: it sits in `common/`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("agent-registry-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
