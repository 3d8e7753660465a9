"""Rendering registry snapshots in a chosen `Format`, reusing what did not change.

The per-user families come from the fast writer; the exporter's own metrics go through a
private prometheus_client registry and are appended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import is_
from typing import Generic, Required, TypedDict, TypeVar, Unpack

from ..registry import RegistrySnapshot
from . import catalogue as c
from .chunks import DEFAULT_CHUNK_USERS, Chunk, ChunkCache, check_chunk_users, packed, spans
from .deflate import DeflateEngine, default_engine
from .deltas import DeltaHistory, apply_changes, can_apply, remember
from .exporter_metrics import ExporterMetrics
from .formats import Format
from .histograms import age_histogram
from .parts import BodyParts, Deflated, GzipParts, PlainParts, deflate_piece
from .pauses import pause
from .writer import (
    COUNT,
    SECONDS,
    RegistryView,
    encode,
    escape,
    lines,
    registry_totals,
    user_line,
    worker_label,
    write_families,
)

__all__ = ["RenderOptions", "Rendered", "Renderer", "delta_users_limit", "render"]


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
        self._history = DeltaHistory()

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
        select = _Selection(
            self.chunk_users, max_user_series, user_series_min_pressure, self._history
        )
        write = (snapshots, select, metrics, format, export_session_age)
        if gzipped:
            body = _write(self._deflated, GzipParts(self.engine), *write)
        else:
            body = _write(self._text, PlainParts(), *write)
        self._history.keep_for(self._shown())
        metrics.scrape_duration.set(time.perf_counter() - started)
        return Rendered(parts=body, format=format, gzipped=gzipped)

    def _shown(self) -> dict[str | None, list[int]]:
        """The generation each cache that takes changes shows, by registry."""
        shown: dict[str | None, list[int]] = {}
        for worker, generation in chain(_shown(self._deflated), _shown(self._text)):
            shown.setdefault(worker, []).append(generation)
        return shown


def _shown(caches: _Caches[P]) -> list[tuple[str | None, int]]:
    """The generation each cache of this kind that takes changes shows, and its registry."""
    by_worker = list(caches.by_worker.items())  # a copy: a concurrent render replaces it
    return [(w, cache.delta.generation) for w, cache in by_worker if cache.delta is not None]


def _deflated_size(piece: Deflated) -> int:
    return len(piece.data)


@dataclass(frozen=True, slots=True)
class _Selection:
    """Which users a render exports, and the chunk length."""

    chunk_users: int
    max_user_series: int
    min_pressure: float
    history: DeltaHistory

    def exports_all(self, snapshot: RegistrySnapshot) -> bool:
        limit = delta_users_limit(self.max_user_series, self.min_pressure)
        return limit > 0 and len(snapshot.sessions) <= limit


def delta_users_limit(max_user_series: int, min_pressure: float) -> int:
    """The most users for whom a render takes a snapshot's changes (it must export every
    one); 0: it never does, a minimum pressure leaving users out. A source that knows this
    need not copy what only a full walk reads."""
    return max_user_series if min_pressure <= 0 else 0


def _write(
    caches: _Caches[P],
    parts: BodyParts[P],
    snapshots: Sequence[RegistrySnapshot],
    select: _Selection,
    metrics: ExporterMetrics,
    fmt: Format,
    export_session_age: bool,
) -> tuple[bytes, ...]:
    """The whole body into `parts`, the per-user families reusing `caches`."""
    if not caches.lock.acquire(blocking=False):
        caches = caches.fresh()  # a concurrent render: this one starts afresh
        caches.lock.acquire()
    try:
        try:
            registries, chunks = _refresh(caches, snapshots, select)
            write_families(parts, fmt, registries, chunks, export_session_age)
        finally:
            caches.lock.release()
        parts.text(encode(registry_totals(fmt, registries)))
        parts.text(fmt.collected(metrics.registry))
        if fmt.trailer:
            parts.text(fmt.trailer)
        return tuple(parts.finish())
    finally:
        parts.close()  # a helper thread compressing the body stops, whatever happened


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
    caches: _Caches[P], snapshots: Sequence[RegistrySnapshot], select: _Selection
) -> tuple[list[RegistryView], list[list[Chunk[P]]]]:
    """Each registry's view and chunks for this render: from the snapshot's changes where
    the cache can take them, else reused where their users are unchanged."""
    kept: dict[str | None, ChunkCache[P]] = {}
    views, out = [], []
    for snapshot in snapshots:
        key, label = snapshot.worker, snapshot.user_label
        cache = caches.by_worker.get(key)
        if cache is None or cache.label is not label:  # a new key writes every label anew
            cache = ChunkCache(caches.encode, caches.size, label)
        kept[key] = cache
        view = _from_changes(cache, snapshot, select)
        if view is None:
            view = RegistryView.of(snapshot, select.max_user_series, select.min_pressure)
            cache.delta = None  # the walk changes chunks in place: the old state is gone
            try:
                cache.order = _refresh_one(cache, view, select.chunk_users)
            except BaseException:
                cache.order = []  # pieces may no longer match their users
                raise
            if select.exports_all(snapshot):
                remember(cache, snapshot, view.counts)
            else:
                cache.delta = None
        views.append(view)
        out.append(cache.order)
    caches.by_worker = kept  # a worker gone since the last render takes its cache along
    return views, out


def _from_changes(
    cache: ChunkCache[P], snapshot: RegistrySnapshot, select: _Selection
) -> RegistryView | None:
    """The view of a registry whose cache took the snapshot's changes; None: walk it all."""
    totals = snapshot.totals
    select.history.record(snapshot)
    if cache.delta is not None:
        snapshot = select.history.reaching(snapshot, cache.delta.generation)
    if totals is None or not select.exports_all(snapshot) or not can_apply(cache.delta, snapshot):
        return None
    worker = worker_label(snapshot)
    line_of = (
        user_line(c.USER_AGENTS, worker, COUNT),
        user_line(c.USER_SESSION_CREATED, worker, SECONDS),
    )
    try:
        agents = apply_changes(cache, snapshot, line_of, select.chunk_users)
    except BaseException:
        # Half taken in, pieces may no longer match their users: nothing of it is reused.
        cache.order, cache.delta = [], None
        raise
    if agents is None:
        return None
    created: list[float] = []
    for chunk in cache.order:  # a chunk at a time: no long C call over every user
        pause()
        created += chunk.created
    ages = age_histogram(created, snapshot.taken_at, snapshot.thresholds.session_age_seconds)
    return RegistryView(snapshot, [], [], [], totals[1], 0, worker, agents, ages)


def _refresh_one(cache: ChunkCache[P], registry: RegistryView, chunk_users: int) -> list[Chunk[P]]:
    user_ids, counts, created = registry.user_ids, registry.counts, registry.created
    agents_line = registry.line(c.USER_AGENTS, COUNT)
    created_line = registry.line(c.USER_SESSION_CREATED, SECONDS)
    encode_piece = cache.encode
    old = cache.chunks
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
                packed(chunk_counts),
                chunk_created,
                encode_piece(lines(agents_line, labels, chunk_counts)),
                encode_piece(lines(created_line, labels, chunk_created)),
            )
        else:
            if list(chunk.counts) != chunk_counts:
                chunk.counts = packed(chunk_counts)
                chunk.agents_data = encode_piece(lines(agents_line, chunk.labels, chunk_counts))
            if chunk.created != chunk_created:
                chunk.created = chunk_created
                chunk.created_data = encode_piece(lines(created_line, chunk.labels, chunk_created))
        chunks.append(chunk)
    return chunks  # what was not reused is dropped: the cache never outgrows a body
