"""The domain, no I/O: sessions, the registry, the lifecycle manager, thresholds, monitoring
results, and the tracker that tells whether cleaned agents were really freed."""

from .cleaned import DEFAULT_LEAK_GRACE_SECONDS, CleanedAgentTracker
from .lifecycle import AgentLifecycleManager, CleanupResult, SessionStore
from .monitoring import MonitorResult, Status
from .registry import AgentRegistry, DuplicateAgentError
from .sessions import (
    SessionColumns,
    SessionLike,
    SessionRow,
    UserAgentSession,
    agent_counts,
    check_user_id,
)
from .snapshot import RegistrySnapshot
from .thresholds import Thresholds

__all__ = [
    "DEFAULT_LEAK_GRACE_SECONDS",
    "AgentLifecycleManager",
    "AgentRegistry",
    "CleanedAgentTracker",
    "CleanupResult",
    "DuplicateAgentError",
    "MonitorResult",
    "RegistrySnapshot",
    "SessionColumns",
    "SessionLike",
    "SessionRow",
    "SessionStore",
    "Status",
    "Thresholds",
    "UserAgentSession",
    "agent_counts",
    "check_user_id",
]
