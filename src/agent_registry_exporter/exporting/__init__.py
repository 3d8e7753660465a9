"""The renderer's internals: series-cap selection, reusable chunks, one gzip member."""

from .chunks import DEFAULT_CHUNK_USERS, Chunk, ChunkCache, check_chunk_users, spans
from .deflate import ISAL, ZLIB, DeflateEngine, default_engine, engines
from .parts import BodyParts, Deflated, GzipParts, PlainParts, deflate_piece
from .selection import select_indexes

__all__ = [
    "DEFAULT_CHUNK_USERS",
    "ISAL",
    "ZLIB",
    "BodyParts",
    "Chunk",
    "ChunkCache",
    "DeflateEngine",
    "Deflated",
    "GzipParts",
    "PlainParts",
    "check_chunk_users",
    "default_engine",
    "deflate_piece",
    "engines",
    "select_indexes",
    "spans",
]
