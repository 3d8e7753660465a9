"""The domain, no I/O: sessions, the registry, the lifecycle manager, thresholds, and the
tracker that tells whether cleaned agents were really freed."""

from .cleaned import DEFAULT_LEAK_GRACE_SECONDS, CleanedAgentTracker
from .lifecycle import AgentLifecycleManager, CleanupResult, Thresholds
from .registry import (
    AgentRegistry,
    DuplicateAgentError,
    RegistrySnapshot,
    SessionColumns,
    SessionLike,
    SessionRow,
    UserAgentSession,
    agent_counts,
)

__all__ = [
    "DEFAULT_LEAK_GRACE_SECONDS",
    "AgentLifecycleManager",
    "AgentRegistry",
    "CleanedAgentTracker",
    "CleanupResult",
    "DuplicateAgentError",
    "RegistrySnapshot",
    "SessionColumns",
    "SessionLike",
    "SessionRow",
    "Thresholds",
    "UserAgentSession",
    "agent_counts",
]
