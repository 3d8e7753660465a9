"""Small helpers every layer above the domain may use: log lines, the process's memory."""

from .logs import LOGGER, LOGGER_NAMES, configure_logging
from .process import resident_memory_bytes

__all__ = ["LOGGER", "LOGGER_NAMES", "configure_logging", "resident_memory_bytes"]
