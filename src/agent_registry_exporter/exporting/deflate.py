"""Deflate engines: what compresses the body, and the CRC-32 functions its trailer needs."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .crc import crc32_combine

__all__ = ["ZLIB", "Compressor", "DeflateEngine", "default_engine", "engines"]


class Compressor(Protocol):
    """A deflate stream being written (zlib's and isal's compress objects)."""

    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, mode: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DeflateEngine:
    """A deflate implementation at the level the renderer uses it."""

    name: str
    level: int
    compressobj: Callable[[int, int, int], Compressor]  # (level, method, wbits)
    crc32: Callable[[bytes, int], int]
    crc32_combine: Callable[[int, int, int], int]
    sync_flush: int
    full_flush: int

    def raw(self, window_bits: int = 15) -> Compressor:
        """A raw deflate stream (no header or trailer) with a 2**window_bits window."""
        return self.compressobj(self.level, zlib.DEFLATED, -window_bits)


# Level 1: measured 2.3x faster than level 6 on a 100,000-user scrape for 7% more bytes;
# the CPU is the backend's, the bytes only cross the pod network.
ZLIB = DeflateEngine(
    name="zlib",
    level=1,
    compressobj=zlib.compressobj,
    crc32=zlib.crc32,
    crc32_combine=crc32_combine,
    sync_flush=zlib.Z_SYNC_FLUSH,
    full_flush=zlib.Z_FULL_FLUSH,
)


def engines() -> tuple[DeflateEngine, ...]:
    """Every engine available here, the preferred first."""
    return (ZLIB,)


def default_engine() -> DeflateEngine:
    """The engine the renderer uses unless told otherwise."""
    return engines()[0]
