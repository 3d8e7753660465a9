"""What the sidecar's memory limit must hold: a formula from measurements."""

from __future__ import annotations

__all__ = ["sidecar_memory_bytes"]

# Measured with benchmarks/hostile.py (docs/sidecar-memory.md): the sidecar idle, and what a
# worker answering a valid snapshot at the bound costs on top (its answer read, decoded and
# rendered: 4 times the bound), plus the one decode in flight at a time (2 times), plus the
# render cache (under 100 bytes per exported user).
_IDLE_BYTES = 64 << 20
_PER_WORKER_ANSWERS = 4
_DECODING_ANSWERS = 2
_CACHE_BYTES_PER_USER = 100


def sidecar_memory_bytes(workers: int, max_worker_answer_bytes: int, max_user_series: int) -> int:
    """The memory the sidecar may use gathering `workers` workers that each answer as much
    as `max_worker_answer_bytes` lets them, `max_user_series` users of each exported."""
    per_worker = _PER_WORKER_ANSWERS * max_worker_answer_bytes
    per_worker += _CACHE_BYTES_PER_USER * max_user_series
    return _IDLE_BYTES + workers * per_worker + _DECODING_ANSWERS * max_worker_answer_bytes
