"""The domain, no I/O: sessions, the registry, the lifecycle manager, thresholds, monitoring
results, the tracker that tells whether cleaned agents were really freed, and the change log
that readers of only what changed read."""

from .changes import Changes, changed_at_end
from .cleaned import DEFAULT_LEAK_GRACE_SECONDS, CleanedAgentTracker
from .lifecycle import AgentLifecycleManager, CleanupResult, SessionStore
from .monitoring import MonitorResult, Status
from .registry import AgentRegistry, DuplicateAgentError
from .sessions import (
    SessionColumns,
    SessionLike,
    SessionOwner,
    SessionRow,
    UserAgentSession,
    agent_counts,
    check_user_id,
    created_timestamps,
)
from .sessions_at import SessionsAt, SnapshotExpired
from .snapshot import RegistrySnapshot
from .thresholds import Thresholds

__all__ = [
    "DEFAULT_LEAK_GRACE_SECONDS",
    "AgentLifecycleManager",
    "AgentRegistry",
    "Changes",
    "CleanedAgentTracker",
    "CleanupResult",
    "DuplicateAgentError",
    "MonitorResult",
    "RegistrySnapshot",
    "SessionColumns",
    "SessionLike",
    "SessionOwner",
    "SessionRow",
    "SessionStore",
    "SessionsAt",
    "SnapshotExpired",
    "Status",
    "Thresholds",
    "UserAgentSession",
    "agent_counts",
    "changed_at_end",
    "check_user_id",
    "created_timestamps",
]
