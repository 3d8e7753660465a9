"""What the sidecar's memory limit must hold: a formula from measurements."""

from __future__ import annotations

__all__ = ["sidecar_memory_bytes"]

# Measured with benchmarks/hostile.py (docs/sidecar-memory.md), the workers at the bound
# restarted once: the sidecar keeps each worker's last full columns between scrapes, so a
# restarted worker's full answer is read and decoded while they are held. The peak grew by
# about 3.3 times the bound per worker, over about 6 times the bound once (the one decode
# in flight at a time, and the held columns' memory not all given back when they go):
# 4 per worker, 6 once, plus the idle sidecar and the render cache (under 100 bytes per
# exported user).
_IDLE_BYTES = 64 << 20
_PER_WORKER_ANSWERS = 4
_ONCE_ANSWERS = 6
_CACHE_BYTES_PER_USER = 100


def sidecar_memory_bytes(workers: int, max_worker_answer_bytes: int, max_user_series: int) -> int:
    """The memory the sidecar may use gathering `workers` workers that each answer as much
    as `max_worker_answer_bytes` lets them, `max_user_series` users of each exported."""
    per_worker = _PER_WORKER_ANSWERS * max_worker_answer_bytes
    per_worker += _CACHE_BYTES_PER_USER * max_user_series
    return _IDLE_BYTES + workers * per_worker + _ONCE_ANSWERS * max_worker_answer_bytes
