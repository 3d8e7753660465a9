"""Waiting for a condition: the one polling helper of the harness, its tests and the demo.

A timeout here only bounds how long a broken run hangs; it is never the assertion. It is
generous on purpose (the machine may be shared): a condition that holds returns at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_TIMEOUT", "WaitTimeout", "wait_until", "wait_until_async"]

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.1


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError: a test reports a failure)."""


def _timed_out(message: str, timeout: float, last: object) -> WaitTimeout:
    return WaitTimeout(f"not within {timeout:g}s: {message} (last seen: {last!r})")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str = "condition never held",
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    An exception from `predicate` ends the wait at once (a process that died is not
    waited for). Raises `WaitTimeout` naming `message` after `timeout` seconds.
    """
    give_up = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= give_up:
            raise _timed_out(message, timeout, result)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the same arguments as wait_until
    interval: float = DEFAULT_INTERVAL,
    message: str = "condition never held",
) -> T:
    """`wait_until` on the event loop: `predicate` may be a plain or a coroutine function.

    The loop runs between calls, so what the predicate waits for can happen meanwhile.
    """
    give_up = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= give_up:
            raise _timed_out(message, timeout, result)
        await asyncio.sleep(interval)
