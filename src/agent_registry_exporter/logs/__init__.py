"""Logging: one line per event, the exporter's logger names, and a switch for embedding hosts."""

from .lines import LOGGER, LOGGER_NAMES, configure_logging

__all__ = ["LOGGER", "LOGGER_NAMES", "configure_logging"]
