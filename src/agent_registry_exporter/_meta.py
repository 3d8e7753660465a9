"""The package's own names: its version and its logger names (both part of the contract).

Every layer may import this module; it imports nothing of the package, so nothing inside
needs the package root for `__version__`, and no logger name follows a module's path.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["LOGGER", "LOGGER_NAMES", "__version__", "logger_name"]

try:
    __version__ = version("agent-registry-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# Every logger of the package is a child of this one.
LOGGER = "agent_registry_exporter"

# The documented loggers: what each one says. Names are chosen here, never from module paths.
LOGGER_NAMES = {
    f"{LOGGER}.remediation.policy": "one line per webhook decision; late cleanups; the breaker",
    f"{LOGGER}.lifecycle": "each cleanup: agents closed, errors, sessions left alone",
    f"{LOGGER}.server": "listening, render failures, token reloads, shutdown and what it left",
    f"{LOGGER}.serving.limits": "connection cap lowered to fit the open-file limit",
}

# The other loggers, kept as they were named before the modules moved.
_MORE_LOGGERS = (
    "remediation.routing",
    "remediation.peers",
    "sources.sidecar",
    "sources.socket_api",
    "security.reload",
)


def logger_name(key: str) -> str:
    """The full name of the package's logger `key` (e.g. ``"lifecycle"``)."""
    name = f"{LOGGER}.{key}"
    if name not in LOGGER_NAMES and key not in _MORE_LOGGERS:
        raise KeyError(f"no logger {key!r}: name it in agent_registry_exporter._meta")
    return name
