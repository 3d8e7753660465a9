"""Where rendered text goes: plain parts, or one gzip member assembled from deflate pieces.

The gzip body is built the way pigz joins independently compressed blocks into one stream:
every cached chunk is raw deflate ended on a byte boundary by a sync flush (never a final
block), so pieces compressed at different scrapes can be sent back to back. Fresh text is
compressed by one running stream that is fully flushed (its history dropped) before each
cached piece, so nothing refers back across a piece it did not compress. One header, one
final empty block, and a trailer whose CRC-32 is combined from the pieces' CRCs and whose
length is their sum: a single gzip member, which every decoder reads whole (curl included).
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Protocol, TypeVar

from .deflate import DeflateEngine
from .pauses import pause

__all__ = [
    "GZIP_HEADER",
    "BodyParts",
    "Deflated",
    "GzipParts",
    "PlainParts",
    "deflate_piece",
]

# No file name, no modification time (0: none), no extra flags, operating system unknown.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final block with fixed Huffman codes holding only the end-of-block code.
_FINAL_EMPTY_BLOCK = b"\x03\x00"
_TRAILER = struct.Struct("<II")
# A 4 KB window still spans dozens of lines (each repeats its family's name), and a stream
# sets up in half the time of the 32 KB default, which dominates for pieces this small.
_PIECE_WINDOW_BITS = 12


class Deflated(NamedTuple):
    """A piece of text as raw deflate ending on a byte boundary, with the text's CRC-32."""

    data: bytes
    crc: int
    size: int  # bytes of text


def deflate_piece(text: bytes, engine: DeflateEngine) -> Deflated:
    """`text` compressed on its own, ready to be spliced into any gzip body."""
    pause()
    compressor = engine.raw(_PIECE_WINDOW_BITS)
    data = compressor.compress(text) + compressor.flush(engine.sync_flush)
    return Deflated(data, engine.crc32(text, 0), len(text))


P_contra = TypeVar("P_contra", contravariant=True)


class BodyParts(Protocol[P_contra]):
    """Collects a body in pieces, compressing as it goes; the pieces are sent as they are."""

    def text(self, data: bytes) -> None:
        """Fresh text."""

    def cached(self, piece: P_contra) -> None:
        """A piece prepared earlier, sent unchanged."""

    def finish(self) -> list[bytes]:
        """The body's pieces, in order."""
        ...


class PlainParts:
    """An uncompressed body: text and cached pieces are both plain text."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def text(self, data: bytes) -> None:
        pause()
        self._parts.append(data)

    cached = text

    def finish(self) -> list[bytes]:
        return self._parts


class GzipParts:
    """One gzip member: fresh text compressed as it comes, cached pieces spliced in."""

    def __init__(self, engine: DeflateEngine) -> None:
        self._engine = engine
        self._compressor = engine.raw()
        self._parts: list[bytes] = [GZIP_HEADER]
        self._unflushed = False  # fresh text given since the stream was last flushed
        self._crc = 0
        self._size = 0

    def text(self, data: bytes) -> None:
        # Chunk by chunk, pausing between them, so the embedding backend's loop keeps running.
        pause()
        if out := self._compressor.compress(data):
            self._parts.append(out)
        self._crc = self._engine.crc32(data, self._crc)
        self._size += len(data)
        self._unflushed = True

    def cached(self, piece: Deflated) -> None:
        pause()
        if self._unflushed:
            # Byte-aligned, and the history dropped: later text never refers across `piece`.
            self._parts.append(self._compressor.flush(self._engine.full_flush))
            self._unflushed = False
        self._parts.append(piece.data)
        self._crc = self._engine.crc32_combine(self._crc, piece.crc, piece.size)
        self._size += piece.size

    def finish(self) -> list[bytes]:
        if self._unflushed:
            self._parts.append(self._compressor.flush(self._engine.sync_flush))
        self._parts.append(_FINAL_EMPTY_BLOCK + _TRAILER.pack(self._crc, self._size & 0xFFFFFFFF))
        return self._parts
