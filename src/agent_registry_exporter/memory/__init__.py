"""Memory truth: were cleaned agents really freed, and how much memory the process holds."""

from .leaks import CleanedAgentTracker
from .process import resident_memory_bytes

__all__ = ["CleanedAgentTracker", "resident_memory_bytes"]
