"""The resident memory of this process, for a snapshot to carry (sidecar workers)."""

from __future__ import annotations

import os

__all__ = ["resident_memory_bytes"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int | None:
    """Resident set size in bytes, read from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
