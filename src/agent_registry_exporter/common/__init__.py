"""Small helpers every layer above the domain may use: log lines, the process's memory, JSON
errors and the refusal of compressed bodies (the exporter's server and the registry socket
API alike), a token bucket, the exporter's HTTP paths."""

from .bodies import refuse_encoded_bodies
from .endpoints import WEBHOOK_PATH
from .json_errors import json_error, json_errors
from .logs import LOGGER, LOGGER_NAMES, configure_logging
from .process import resident_memory_bytes
from .token_bucket import TokenBucket

__all__ = [
    "LOGGER",
    "LOGGER_NAMES",
    "WEBHOOK_PATH",
    "TokenBucket",
    "configure_logging",
    "json_error",
    "json_errors",
    "refuse_encoded_bodies",
    "resident_memory_bytes",
]
