"""Where rendered text goes: plain parts, or one gzip member assembled from deflate pieces.

The gzip body is built the way pigz joins independently compressed blocks into one stream:
every cached chunk is raw deflate ended on a byte boundary by a full flush (never a final
block, and no reference to anything before it), so pieces compressed at different scrapes
can be sent back to back. Fresh text is
compressed by one running stream that is fully flushed (its history dropped) before each
cached piece, so nothing refers back across a piece it did not compress; in a large body, by
a helper thread (ISA-L and zlib release the GIL while they compress) while the render
formats the next text. One header, one
final empty block, and a trailer whose CRC-32 is combined from the pieces' CRCs and whose
length is their sum: a single gzip member, which every decoder reads whole (curl included).
"""

from __future__ import annotations

import queue
import struct
import threading
from typing import NamedTuple, Protocol, TypeVar

from .deflate import Compressor, DeflateEngine
from .pauses import helper_started, helper_stopped, pause

__all__ = [
    "BATCH",
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
# Fresh text per compress call once a body has that much: ~0.5 ms of ISA-L level 1, long
# beside the helper's wait for the GIL after each call (the render lets it in at its next
# pause, at most a millisecond later), and 24 batches for 100,000 users' ages.
BATCH = 256 * 1024


class Deflated(NamedTuple):
    """A piece of text as raw deflate ending on a byte boundary, with the text's CRC-32."""

    data: bytes
    crc: int
    size: int  # bytes of text


class _Streams(threading.local):
    """Each thread's stream for pieces, by engine (~360 KiB for ISA-L, ~150 KiB for zlib)."""

    def __init__(self) -> None:
        self.by_engine: dict[DeflateEngine, Compressor] = {}


_streams = _Streams()


def deflate_piece(text: bytes, engine: DeflateEngine) -> Deflated:
    """`text` compressed on its own, ready to be spliced into any gzip body.

    Each piece is what one stream gives between two full flushes: the flush ends it on a
    byte boundary and drops the history, so the next piece refers to nothing before it.
    A stream set up once per thread, not per piece: setting one up took a sixth of a
    piece's time (100,000 users, 1% changed: ~700 pieces a render).
    """
    pause()
    # Taken out while in use: a piece that fails (no memory) leaves no stream half used.
    compressor = _streams.by_engine.pop(engine, None) or engine.raw(_PIECE_WINDOW_BITS)
    data = compressor.compress(text) + compressor.flush(engine.full_flush)
    _streams.by_engine[engine] = compressor
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

    def close(self) -> None:
        """Release what the parts hold (called after `finish`, or when the render failed)."""


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

    def close(self) -> None:
        pass


class GzipParts:
    """One gzip member: fresh text compressed as it comes, cached pieces spliced in.

    Fresh text is compressed in batches of at least `batch` bytes, each one C call that
    releases the GIL; from the first full batch on, a helper thread compresses them while
    the render formats the next (the running stream is the helper's from then on, and its
    output takes the place among the parts the batch had). Smaller bodies never start it.
    """

    def __init__(self, engine: DeflateEngine, batch: int | None = None) -> None:
        self._engine = engine
        self._batch = BATCH if batch is None else batch
        self._compressor = engine.raw()
        self._parts: list[bytes] = [GZIP_HEADER]
        self._pending: list[bytes] = []  # fresh text not yet handed to the stream
        self._pending_size = 0
        self._unflushed = False  # fresh text given since the stream was last flushed
        self._helper: _Helper | None = None
        self._crc = 0
        self._size = 0

    def text(self, data: bytes) -> None:
        # Chunk by chunk, pausing between them, so the embedding backend's loop keeps running.
        pause()
        self._pending.append(data)
        self._pending_size += len(data)
        self._crc = self._engine.crc32(data, self._crc)
        self._size += len(data)
        self._unflushed = True
        if self._pending_size >= self._batch:
            self._compress(None)

    def cached(self, piece: Deflated) -> None:
        pause()
        if self._unflushed:
            # Byte-aligned, and the history dropped: later text never refers across `piece`.
            self._compress(self._engine.full_flush)
            self._unflushed = False
        self._parts.append(piece.data)
        self._crc = self._engine.crc32_combine(self._crc, piece.crc, piece.size)
        self._size += piece.size

    def finish(self) -> list[bytes]:
        if self._unflushed:
            self._compress(self._engine.sync_flush)
            self._unflushed = False
        if self._helper is not None:
            self._helper.join()  # every batch in its place (or the helper's error raised)
        self._parts.append(_FINAL_EMPTY_BLOCK + _TRAILER.pack(self._crc, self._size & 0xFFFFFFFF))
        return [part for part in self._parts if part]

    def close(self) -> None:
        """Stop the helper thread, if any (after `finish`, or when the render failed)."""
        if self._helper is not None:
            self._helper.stop()

    def _compress(self, flush: int | None) -> None:
        """The pending text (then a flush of the stream) compressed, in its place."""
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        at = len(self._parts)
        self._parts.append(b"")
        if self._helper is None and len(data) < self._batch:
            self._parts[at] = compressed(self._compressor, data, flush)
            return
        if self._helper is None:
            self._helper = _Helper(self._compressor, self._parts)
        self._helper.put(at, data, flush)


def compressed(compressor: Compressor, data: bytes, flush: int | None) -> bytes:
    """`data` through the running stream, then `flush` of it (None: none)."""
    out = compressor.compress(data)
    return out if flush is None else out + compressor.flush(flush)


class _Helper:
    """A thread compressing a stream's batches in order, each into its place among `parts`."""

    def __init__(self, compressor: Compressor, parts: list[bytes]) -> None:
        self._queue: queue.SimpleQueue[tuple[int, bytes, int | None] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._counted = False
        self._thread = threading.Thread(
            target=self._run, args=(compressor, parts), name="gzip-batches", daemon=True
        )
        self._thread.start()
        self._counted = True
        helper_started()  # the render's pauses let this thread in (see pauses.py)

    def put(self, at: int, data: bytes, flush: int | None) -> None:
        self._queue.put((at, data, flush))

    def join(self) -> None:
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._counted:  # on the render's thread, as the start: once, however often stopped
            self._counted = False
            helper_stopped()

    def _run(self, compressor: Compressor, parts: list[bytes]) -> None:
        while (batch := self._queue.get()) is not None:
            at, data, flush = self._joined(batch)
            try:
                parts[at] = compressed(compressor, data, flush)
            except BaseException as exc:  # raised again by join(), in the render's thread
                self._error = exc
                return

    def _joined(self, batch: tuple[int, bytes, int | None]) -> tuple[int, bytes, int | None]:
        """`batch` and the unflushed batches queued right after it, as one: a helper that
        fell behind catches up in one call (each costs it a wait for the GIL). Batches with
        no flush between them are contiguous text of the stream: no cached piece between."""
        at, data, flush = batch
        joined = [data]
        while flush is None:
            try:
                after = self._queue.get_nowait()
            except queue.Empty:
                break
            if after is None:
                self._queue.put(None)  # the end, seen again by the loop
                break
            _, data, flush = after  # its place stays empty: this one's output covers it
            joined.append(data)
        return at, b"".join(joined) if len(joined) > 1 else joined[0], flush
