"""Short pauses in the render thread, so the embedding backend's event loop keeps running.

A thread running bytecode keeps the GIL until another thread has waited a whole switch
interval (5 ms by default) for it: a render in `asyncio.to_thread` stalls the host's loop
that long at each of its ticks, however short each C call is. `time.sleep(0)` releases the
GIL and lets a waiting thread take it at once; the renderer calls `pause()` between pieces,
and it sleeps only when `PAUSE_SECONDS` have passed since this thread's last pause.
"""

from __future__ import annotations

import threading
from time import perf_counter, sleep

__all__ = ["PAUSE_SECONDS", "pause", "pauses_taken"]

# Measured (benchmarks/scrape.py, 100,000 users): the loop's worst stall halves with pauses
# every 0.5 ms or 1 ms alike; at 0.5 ms the scrape took ~20% longer (the GIL handed back and
# forth twice as often), at 1 ms as long as with no pause.
PAUSE_SECONDS = 0.001


class _Last(threading.local):
    at = 0.0
    taken = 0


_last = _Last()


def pause() -> None:
    """Let other threads take the GIL, if this thread has held it long enough."""
    if perf_counter() - _last.at >= PAUSE_SECONDS:
        sleep(0)
        _last.at = perf_counter()
        _last.taken += 1


def pauses_taken() -> int:
    """How many pauses this thread has taken (for tests)."""
    return _last.taken
