"""Short pauses in the render thread, so the embedding backend's event loop keeps running.

A thread running bytecode keeps the GIL until another thread has waited a whole switch
interval (5 ms by default) for it: a render in a thread stalls the host's loop that long at
each of its ticks, however short each C call is. The renderer calls `pause()` between
pieces, and a pause does something only when `PAUSE_SECONDS` have passed since this
thread's last one.

Giving the GIL up for a moment (`time.sleep(0)`) does not hand it over: the render thread
takes it straight back, mostly before the waiting thread has woken, and that waiter then
waits a whole new interval (CPython asks the holder to drop the GIL only when no other
thread took it meanwhile). So a render run by `in_thread` is watched by a `Heartbeat` on the
loop that started it: when that has not ticked on time, the loop is waiting, and the pause
sleeps until the loop has run (at most `HAND_OVER_SECONDS`). Otherwise, in a watched render
or while this thread has a helper (the gzip helper, see parts.py: it waits for the GIL
after each batch it compresses), a pause is `time.sleep(0)`, which lets a thread already
waiting in at the cost of a system call (~0.08 ms: the sleep lasts the kernel's timer
slack); the loop then often runs before it is late (100,000 users: half the hand-overs,
the same worst stall). In a render no loop watches and with no helper, nobody is known to
wait, and a pause does nothing. A host whose loop is busy with Python
work of its own is late at every tick: it gets every pause, and the scrape takes longer
(the host first: its requests are what the exporter must never slow).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter, sleep
from typing import ParamSpec, TypeVar

__all__ = [
    "HAND_OVER_SECONDS",
    "PAUSE_SECONDS",
    "TICK_SECONDS",
    "Heartbeat",
    "helper_started",
    "helper_stopped",
    "in_thread",
    "pause",
    "pauses_taken",
    "watched_by",
]

# Measured (benchmarks/scrape.py, 100,000 users): the loop's worst stall halves with pauses
# every 0.5 ms or 1 ms alike; at 0.5 ms the scrape took ~20% longer (the GIL handed back and
# forth twice as often), at 1 ms as long as with no pause.
PAUSE_SECONDS = 0.001
# The heartbeat's period: the loop is late when a pause finds no tick for longer than this
# plus a pause's interval. A loop waiting for the GIL then waits at most about two periods.
TICK_SECONDS = 0.001
# How long a pause waits for a late loop to run, and how it waits: sleeping, not holding
# the GIL (a sleep this short still lasts the kernel's timer slack, ~0.05 ms).
HAND_OVER_SECONDS = 0.002
_NAP_SECONDS = 0.00005


class Heartbeat:
    """A callback on the loop every `TICK_SECONDS` while started: when it last ran."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self.at = perf_counter()
        # The tick a hand-over waited for in vain (the loop busy, not waiting for the GIL):
        # no pause waits again until the loop has ticked since.
        self.missed = -1.0

    def start(self) -> None:
        self.at = perf_counter()
        self._handle = self._loop.call_later(TICK_SECONDS, self.tick)

    @property
    def ticking(self) -> bool:
        return self._handle is not None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self) -> None:
        """On the loop: it runs (and ticks again in `TICK_SECONDS`)."""
        self.at = perf_counter()
        self._handle = self._loop.call_later(TICK_SECONDS, self.tick)

    def late(self, now: float) -> bool:
        """Whether the loop has missed its tick by more than a pause's interval (and was
        not already waited for in vain at this tick)."""
        return now - self.at > TICK_SECONDS + PAUSE_SECONDS and self.at != self.missed

    def hand_over(self) -> None:
        """Sleep until the loop has ticked (it had the GIL), or `HAND_OVER_SECONDS`; a loop
        that did not tick meanwhile is busy with something else, not waiting for us."""
        seen = self.at
        deadline = perf_counter() + HAND_OVER_SECONDS
        while self.at == seen:
            if perf_counter() >= deadline:
                self.missed = seen
                return
            sleep(_NAP_SECONDS)


_watched: contextvars.ContextVar[Heartbeat | None] = contextvars.ContextVar(
    "render_watched_by", default=None
)


@contextmanager
def watched_by(beat: Heartbeat) -> Iterator[None]:
    """Pauses in this context (and in threads started with a copy of it) watch `beat`."""
    token = _watched.set(beat)
    try:
        yield
    finally:
        _watched.reset(token)


P = ParamSpec("P")
R = TypeVar("R")


async def in_thread(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`func` run in a thread (`asyncio.to_thread`), its pauses handing the GIL to this
    loop whenever the loop waits for it."""
    beat = Heartbeat(asyncio.get_running_loop())
    beat.start()
    try:
        with watched_by(beat):  # to_thread runs `func` in a copy of this context
            return await asyncio.to_thread(func, *args, **kwargs)
    finally:
        beat.stop()


class _Last(threading.local):
    at = 0.0
    taken = 0
    helpers = 0  # this thread's helpers running now


_last = _Last()


def pause() -> None:
    """Let other threads take the GIL, if this thread has held it long enough and one may
    want it: the loop that watches this render (handed the GIL when late), or this thread's
    helper."""
    now = perf_counter()
    if now - _last.at < PAUSE_SECONDS:
        return
    beat = _watched.get()
    if beat is not None and beat.late(now):
        beat.hand_over()
    elif beat is not None or _last.helpers:
        sleep(0)
    _last.at = perf_counter()
    _last.taken += 1


def helper_started() -> None:
    """A thread this one hands work to runs, and wants the GIL now and then: this thread's
    pauses let it in until `helper_stopped`."""
    _last.helpers += 1


def helper_stopped() -> None:
    _last.helpers -= 1


def pauses_taken() -> int:
    """How many times this thread reached a pause past the interval (for tests)."""
    return _last.taken
