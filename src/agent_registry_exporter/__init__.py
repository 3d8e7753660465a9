"""agent-registry-exporter: keep multi-user AI-agent backends from leaking sessions."""

from .common import configure_logging
from .common.version import __version__
from .http import ExporterServer, ListenError, create_app, start_exporter
from .registry import (
    AgentLifecycleManager,
    AgentRegistry,
    CleanedAgentTracker,
    CleanupResult,
    DuplicateAgentError,
    MonitorResult,
    RegistrySnapshot,
    SessionRow,
    Status,
    Thresholds,
    UserAgentSession,
)
from .settings import Settings
from .sources import InProcessSource, RegistrySocket, RegistrySource, SidecarSource, serve_registry

__all__ = [
    "AgentLifecycleManager",
    "AgentRegistry",
    "CleanedAgentTracker",
    "CleanupResult",
    "DuplicateAgentError",
    "ExporterServer",
    "InProcessSource",
    "ListenError",
    "MonitorResult",
    "RegistrySnapshot",
    "RegistrySocket",
    "RegistrySource",
    "SessionRow",
    "Settings",
    "SidecarSource",
    "Status",
    "Thresholds",
    "UserAgentSession",
    "__version__",
    "configure_logging",
    "create_app",
    "serve_registry",
    "start_exporter",
]
