"""The renderer of the previous release (commit 5833d51), frozen as a benchmark baseline.

Incremental (chunks reused between scrapes) but zlib only, and gzip members spliced for
OpenMetrics. Only imports were changed: the domain's types come from the installed package.
"""

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
