"""agent-registry-exporter: keep multi-user AI-agent backends from leaking sessions."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agent-registry-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from .lifecycle import AgentLifecycleManager, CleanupResult, Thresholds
from .logs import configure_logging
from .memory import CleanedAgentTracker
from .registry import (
    AgentRegistry,
    DuplicateAgentError,
    RegistrySnapshot,
    SessionRow,
    UserAgentSession,
)
from .server import ExporterServer, ListenError, create_app, start_exporter
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
    "RegistrySnapshot",
    "RegistrySocket",
    "RegistrySource",
    "SessionRow",
    "Settings",
    "SidecarSource",
    "Thresholds",
    "UserAgentSession",
    "__version__",
    "configure_logging",
    "create_app",
    "serve_registry",
    "start_exporter",
]
