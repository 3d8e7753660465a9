"""Rendering registry snapshots in a chosen `Format`, reusing what did not change.

The per-user families come from the fast writer; the exporter's own metrics go through a
private prometheus_client registry and are appended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import is_
from typing import Generic, Required, TypedDict, TypeVar, Unpack

from ..registry import RegistrySnapshot
from . import catalogue as c
from .chunks import DEFAULT_CHUNK_USERS, Chunk, ChunkCache, check_chunk_users, spans
from .deflate import DeflateEngine, default_engine
from .exporter_metrics import ExporterMetrics
from .formats import Format
from .parts import BodyParts, Deflated, GzipParts, PlainParts, deflate_piece
from .writer import (
    COUNT,
    SECONDS,
    RegistryView,
    encode,
    escape,
    lines,
    registry_totals,
    write_families,
)

__all__ = ["RenderOptions", "Rendered", "Renderer", "render"]


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered scrape body, in the pieces it is sent as, and the headers describing it."""

    parts: tuple[bytes, ...]
    format: Format
    gzipped: bool

    @property
    def content_type(self) -> str:
        return self.format.content_type

    @property
    def body(self) -> bytes:
        """The whole body in one piece (a copy: the server sends `parts` instead)."""
        return b"".join(self.parts)

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))


P = TypeVar("P")


@dataclass
class _Caches(Generic[P]):
    """One kind of cached chunk (deflate pieces, or plain text), a cache per registry."""

    encode: Callable[[str], P]
    size: Callable[[P], int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_worker: dict[str | None, ChunkCache[P]] = field(default_factory=dict)

    def fresh(self) -> _Caches[P]:
        return _Caches(self.encode, self.size)

    @property
    def cached_bytes(self) -> int:
        return sum(cache.cached_bytes for cache in self.by_worker.values())


class Renderer:
    """Renders snapshots, reusing what did not change since its previous render.

    The agent-count and created-timestamp lines of a chunk of users are kept (encoded, and
    for gzip scrapes as deflate pieces) and sent again while those users' ids, counts and
    created timestamps are unchanged; the age family, which changes at every scrape, is
    rendered each time. Whatever the history, the body decodes to exactly what a fresh
    render of the same snapshot gives, and a gzip body is one gzip member. One renderer
    serves one source (in sidecar mode, a cache per worker).
    """

    def __init__(
        self, *, chunk_users: int = DEFAULT_CHUNK_USERS, engine: DeflateEngine | None = None
    ) -> None:
        self.chunk_users = check_chunk_users(chunk_users)
        self.engine = engine = default_engine() if engine is None else engine
        self._deflated: _Caches[Deflated] = _Caches(
            lambda text: deflate_piece(encode(text), engine), _deflated_size
        )
        self._text: _Caches[bytes] = _Caches(encode, len)

    @property
    def cached_bytes(self) -> int:
        """Encoded bytes held for reuse (at most the two stable families of each kind)."""
        return self._deflated.cached_bytes + self._text.cached_bytes

    def render(
        self,
        snapshot: RegistrySnapshot,
        metrics: ExporterMetrics,
        *,
        format: Format,
        gzipped: bool = False,
        max_user_series: int = 10_000,
        export_session_age: bool = True,
        user_series_min_pressure: float = 0.0,
    ) -> Rendered:
        """Render a snapshot plus the exporter's own metrics. CPU-bound: call it off the loop.

        A sidecar's snapshot renders each worker's registry beside the others, labelled
        `worker`, never merged; the cap on per-user series applies to each registry.
        """
        started = time.perf_counter()
        snapshots = snapshot.workers if snapshot.workers is not None else (snapshot,)
        registries = [
            RegistryView.of(one, max_user_series, user_series_min_pressure) for one in snapshots
        ]
        write = (registries, metrics, format, export_session_age)
        if gzipped:
            body = _write(self._deflated, GzipParts(self.engine), self.chunk_users, *write)
        else:
            body = _write(self._text, PlainParts(), self.chunk_users, *write)
        metrics.scrape_duration.set(time.perf_counter() - started)
        return Rendered(parts=body, format=format, gzipped=gzipped)


def _deflated_size(piece: Deflated) -> int:
    return len(piece.data)


def _write(
    caches: _Caches[P],
    parts: BodyParts[P],
    chunk_users: int,
    registries: Sequence[RegistryView],
    metrics: ExporterMetrics,
    fmt: Format,
    export_session_age: bool,
) -> tuple[bytes, ...]:
    """The whole body into `parts`, the per-user families reusing `caches`."""
    if not caches.lock.acquire(blocking=False):
        caches = caches.fresh()  # a concurrent render: this one starts afresh
        caches.lock.acquire()
    try:
        chunks = _refresh(caches, registries, chunk_users)
        write_families(parts, fmt, registries, chunks, export_session_age)
    finally:
        caches.lock.release()
    parts.text(encode(registry_totals(fmt, registries)))
    parts.text(fmt.collected(metrics.registry))
    if fmt.trailer:
        parts.text(fmt.trailer)
    return tuple(parts.finish())


class RenderOptions(TypedDict, total=False):
    """`Renderer.render`'s keyword options."""

    format: Required[Format]
    gzipped: bool
    max_user_series: int
    export_session_age: bool
    user_series_min_pressure: float


def render(
    snapshot: RegistrySnapshot, metrics: ExporterMetrics, **options: Unpack[RenderOptions]
) -> Rendered:
    """A full render, remembering nothing (the server keeps a `Renderer` instead)."""
    return Renderer().render(snapshot, metrics, **options)


def _refresh(
    caches: _Caches[P], registries: Sequence[RegistryView], chunk_users: int
) -> list[list[Chunk[P]]]:
    """Each registry's chunks for this render: reused where their users are unchanged."""
    kept: dict[str | None, ChunkCache[P]] = {}
    out = []
    for registry in registries:
        key, label = registry.snapshot.worker, registry.snapshot.user_label
        cache = caches.by_worker.get(key)
        if cache is None or cache.label is not label:  # a new key writes every label anew
            cache = ChunkCache(caches.encode, caches.size, label)
        kept[key] = cache
        out.append(_refresh_one(cache, registry, chunk_users))
    caches.by_worker = kept  # a worker gone since the last render takes its cache along
    return out


def _refresh_one(cache: ChunkCache[P], registry: RegistryView, chunk_users: int) -> list[Chunk[P]]:
    user_ids, counts, created = registry.user_ids, registry.counts, registry.created
    agents_line = registry.line(c.USER_AGENTS, COUNT)
    created_line = registry.line(c.USER_SESSION_CREATED, SECONDS)
    encode_piece = cache.encode
    old, new = cache.chunks, {}
    chunks = []
    for lo, hi in spans(user_ids, chunk_users):
        ids = user_ids[lo:hi]
        chunk_counts, chunk_created = counts[lo:hi], created[lo:hi]
        chunk = old.pop(ids[0], None)
        if chunk is None or chunk.user_ids != ids:
            # Private ids are hashed here, for the users printed and only when they change.
            shown = ids if cache.label is None else list(map(cache.label, ids))
            labels = [escape(user_id) for user_id in shown]
            if all(map(is_, labels, ids)):
                labels = ids  # nothing escaped or hashed: one list, not two (cache memory)
            chunk = Chunk(
                ids,
                labels,
                chunk_counts,
                chunk_created,
                encode_piece(lines(agents_line, labels, chunk_counts)),
                encode_piece(lines(created_line, labels, chunk_created)),
            )
        else:
            if chunk.counts != chunk_counts:
                chunk.counts = chunk_counts
                chunk.agents_data = encode_piece(lines(agents_line, chunk.labels, chunk_counts))
            if chunk.created != chunk_created:
                chunk.created = chunk_created
                chunk.created_data = encode_piece(lines(created_line, chunk.labels, chunk_created))
        new[ids[0]] = chunk
        chunks.append(chunk)
    cache.chunks = new  # what was not reused is dropped here: the cache never outgrows a body
    return chunks
