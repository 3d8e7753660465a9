"""The renderer's internals: series-cap selection, reusable chunks, gzip members."""

from .chunks import DEFAULT_CHUNK_USERS, Chunk, ChunkCache, check_chunk_users, spans
from .parts import GZIP_LEVEL, BodyParts, GzipMembers, GzipStream, PlainParts, gzip_member
from .selection import select_indexes

__all__ = [
    "DEFAULT_CHUNK_USERS",
    "GZIP_LEVEL",
    "BodyParts",
    "Chunk",
    "ChunkCache",
    "GzipMembers",
    "GzipStream",
    "PlainParts",
    "check_chunk_users",
    "gzip_member",
    "select_indexes",
    "spans",
]
