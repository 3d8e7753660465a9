"""Catching log handlers a test leaves behind.

A handler added during a test outlives it. If it holds a stream the test framework then
closes (pytest's captured stderr), every line logged afterwards, by any later test, prints
"--- Logging error --- ... ValueError: I/O operation on closed file" instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["log_handlers", "no_stray_log_handlers"]


def log_handlers() -> list[tuple[str, logging.Handler]]:
    """(logger name, handler) of every handler installed anywhere ("" is the root)."""
    found = [("", h) for h in logging.getLogger().handlers]
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            found += [(name, h) for h in logger.handlers]
    return found


def _framework(handler: logging.Handler) -> bool:
    # pytest installs and removes its capturing handlers itself, around every test phase.
    return type(handler).__module__.startswith("_pytest.")


@contextlib.contextmanager
def no_stray_log_handlers() -> Iterator[None]:
    """Fail (AssertionError) when the block leaves a handler it did not find; remove it first."""
    before = {id(handler) for _, handler in log_handlers()}
    yield
    stray = [
        (name, handler)
        for name, handler in log_handlers()
        if id(handler) not in before and not _framework(handler)
    ]
    for name, handler in stray:
        logging.getLogger(name).removeHandler(handler)
    if stray:
        left = ", ".join(f"{handler!r} on {name or 'the root logger'}" for name, handler in stray)
        raise AssertionError(
            f"log handlers left behind (removed now): {left}; one holding a stream that is "
            "closed later breaks every line logged after it"
        )
