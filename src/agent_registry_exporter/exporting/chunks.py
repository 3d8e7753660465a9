"""Per-user families in chunks that survive between scrapes when their users did not change.

Chunk boundaries are content-defined: a chunk ends after a user whose id hashes to a
multiple of the average chunk length (or at four times that length). Adding, removing or
re-ranking one user therefore changes only the chunk holding it, never shifts the others.
A chunk keeps what its lines were made of (ids, counts, created timestamps); when those
are equal at the next scrape, its encoded agent-count and created-timestamp pieces (plain
text, or deflate for gzip bodies) are reused as they are. (Boundaries follow Python's
per-process string hash, so chunk layout differs between processes; the text never does.)
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass
from itertools import chain, compress, count
from operator import not_
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .chunk_index import ChunkIndex

__all__ = [
    "DEFAULT_CHUNK_USERS",
    "Chunk",
    "ChunkCache",
    "DeltaState",
    "check_chunk_users",
    "packed",
    "spans",
]

# About 6 KB of text per family. Measured at 100,000 random-UUID users with 1% of them
# changed between scrapes: 64 re-renders half the agent-count family (512 re-rendered all
# of it) for 0.1% more compressed bytes (every piece restarts its dictionary).
DEFAULT_CHUNK_USERS = 64


def check_chunk_users(average: int) -> int:
    """`average` if usable as a chunk length (a power of two: boundaries are a hash mask)."""
    if average < 1 or average & (average - 1):
        raise ValueError(f"chunk length {average} is not a power of two")
    return average


def spans(user_ids: Sequence[str], average: int = DEFAULT_CHUNK_USERS) -> Iterator[tuple[int, int]]:
    """Content-defined `(lo, hi)` slices covering `user_ids`, `average` users long on average."""
    check_chunk_users(average)
    mask, longest = average - 1, 4 * average
    lo = 0
    # str hashes are cached on the string objects and computed in C: no Python-level loop,
    # and consumed lazily, a chunk at a time (one pass over every id would hold the GIL).
    ends = compress(count(1), map(not_, map(mask.__and__, map(hash, user_ids))))
    for end in chain(ends, (len(user_ids),)):
        while end - lo > longest:
            yield lo, lo + longest
            lo += longest
        if end > lo:
            yield lo, end
            lo = end


P = TypeVar("P")  # an encoded piece: plain bytes, or deflate with its CRC


def packed(counts: list[int]) -> MutableSequence[int]:
    """Agent counts a byte each when all fit (a list costs 8 bytes a count); else the list.

    Writers of a chunk's counts catch OverflowError and fall back to a list themselves.
    """
    try:
        return array("B", counts)
    except (OverflowError, TypeError):
        return counts


@dataclass(slots=True, eq=False)
class Chunk(Generic[P]):
    """Consecutive exported users and their encoded lines for the two stable families."""

    user_ids: list[str]
    labels: list[str]
    counts: MutableSequence[int]  # `packed`
    created: list[float]
    agents_data: P
    created_data: P


@dataclass(slots=True, eq=False)
class DeltaState(Generic[P]):
    """What a cache needs to take a snapshot's changes instead of reading every user: the
    registry epoch and generation its chunks show (every user of that registry, in the
    registry's order), each user's chunk, and how many users have each agent count."""

    epoch: str
    generation: int
    where: ChunkIndex[Chunk[P]]
    count_of: Counter[int]


class ChunkCache(Generic[P]):
    """The chunks of the last render, in order.

    Bounded by construction: after a render it holds exactly that render's chunks, so its
    encoded bytes are at most the two stable families of one body.
    """

    def __init__(
        self,
        encode: Callable[[str], P],
        size: Callable[[P], int],
        label: Callable[[str], str] | None = None,
    ) -> None:
        self.encode = encode
        self.size = size  # bytes a piece holds
        # How ids became label values (private ids: a keyed hash); another one, another cache.
        self.label = label
        self.order: list[Chunk[P]] = []
        self.delta: DeltaState[P] | None = None

    @property
    def chunks(self) -> dict[str, Chunk[P]]:
        """The chunks by their first user id."""
        return {chunk.user_ids[0]: chunk for chunk in self.order}

    @property
    def cached_bytes(self) -> int:
        size = self.size
        return sum(size(c.agents_data) + size(c.created_data) for c in self.order)
