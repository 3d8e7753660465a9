"""The package's logger names (part of the contract): what each documented logger says.

The bottom layer, beside the version: every layer may import it (the domain names its
logger here too), and no logger name follows a module's path.
"""

from __future__ import annotations

__all__ = ["LOGGER", "LOGGER_NAMES", "logger_name"]

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
        raise KeyError(f"no logger {key!r}: name it in agent_registry_exporter.common.loggers")
    return name
