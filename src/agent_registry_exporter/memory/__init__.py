"""Memory truth: were cleaned agents really freed, and how much memory the process holds."""

from .leaks import DEFAULT_LEAK_GRACE_SECONDS, CleanedAgentTracker
from .process import resident_memory_bytes

__all__ = ["DEFAULT_LEAK_GRACE_SECONDS", "CleanedAgentTracker", "resident_memory_bytes"]
