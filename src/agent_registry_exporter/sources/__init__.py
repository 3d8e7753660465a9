"""Where the exporter gets its data: the `RegistrySource` seam and its implementations."""

from .in_process import InProcessSource
from .protocol import RegistrySource

__all__ = ["InProcessSource", "RegistrySource"]
