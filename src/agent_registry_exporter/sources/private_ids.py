"""Private user ids: a source that exports a keyed hash instead of each user id.

Every `user_id` label becomes `h:` plus 20 hex digits (80 bits) of HMAC-SHA256 under a key
that only this process holds (the snapshot carries the hasher; the renderer applies it).
Prometheus, Alertmanager, Grafana and their long-term storage see hashes only; an alert
comes back with the hash, and this source maps it to the session it came from, from a map
filled as the labels are rendered (or, on a miss, by hashing the current sessions again:
once per webhook payload for all its labels, and a label that matched nobody is remembered,
bounded, until the sessions change). No table of ids leaves the process.

80 bits: the chance that two of n users share a label is about n^2 / 2^81, 4e-9 at a
hundred million users (64 bits would be 3e-4 there). A shared label would merge two users'
series; the receiver would still re-check the session it maps to before acting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from prometheus_client.core import Metric

from ..common.keyfile import MIN_KEY_BYTES, read_key_file
from ..registry import (
    CleanupResult,
    MonitorResult,
    RegistrySnapshot,
    SessionColumns,
    SessionLike,
    Status,
)
from .protocol import RegistrySource, WorkerSources, peek

__all__ = [
    "MIN_KEY_BYTES",
    "PrivateIdSource",
    "PrivateWorkerSources",
    "UserIdHasher",
    "private_ids",
    "read_key_file",
]

PREFIX = "h:"
_HEX_DIGITS = 20


class UserIdHasher:
    """user id -> `h:` + 20 hex digits of HMAC-SHA256; remembers both directions, bounded."""

    def __init__(self, key: bytes, *, cache_size: int = 100_000) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the key has {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
        self._key = key
        self._cache_size = cache_size
        self._labels: dict[str, str] = {}
        self._ids: dict[str, str] = {}

    @classmethod
    def from_file(cls, path: Path) -> UserIdHasher:
        """The key is the file's bytes, surrounding whitespace removed."""
        return cls(read_key_file(path))

    def __call__(self, user_id: str) -> str:
        label = self._labels.get(user_id)
        if label is None:
            label = self.digest(user_id)
            self.remember(user_id, label)
        return label

    def digest(self, user_id: str) -> str:
        """The label of `user_id`, computed (the cache neither read nor filled)."""
        return PREFIX + hmac.digest(self._key, user_id.encode(), "sha256").hex()[:_HEX_DIGITS]

    def remember(self, user_id: str, label: str) -> None:
        """Cache `label` as the label of `user_id`, both ways."""
        if len(self._labels) >= self._cache_size:
            # Cheaper than an LRU on the scrape path. The renderer hashes only the users of
            # chunks that changed, so a label emptied here comes back through `_resolve`'s
            # search, which remembers the one it finds.
            self._labels.clear()
            self._ids.clear()
        self._labels[user_id] = label
        self._ids[label] = user_id

    def __len__(self) -> int:
        """Ids cached now."""
        return len(self._labels)

    def known(self, label: str) -> str | None:
        """The user id behind `label` if it was hashed since the cache was last emptied."""
        return self._ids.get(label)


def private_ids(source: RegistrySource, hasher: UserIdHasher) -> RegistrySource:
    """`source` with hashed ids; a sidecar's workers stay addressable one by one."""
    if isinstance(source, WorkerSources):
        return PrivateWorkerSources(source, hasher)
    return PrivateIdSource(source, hasher)


def _hashed(snapshot: RegistrySnapshot, label: Callable[[str], str]) -> RegistrySnapshot:
    # The renderer applies the label to the ids it prints: a capped scrape hashes only the
    # users it exports, in its worker thread; the sessions themselves stay as they are.
    workers = snapshot.workers
    return dataclasses.replace(
        snapshot,
        user_label=label,
        workers=None if workers is None else tuple(_hashed(w, label) for w in workers),
    )


class PrivateIdSource:
    """Wraps a `RegistrySource`: hashed ids out, hashed ids back in (webhook, monitoring)."""

    def __init__(
        self, inner: RegistrySource, hasher: UserIdHasher, *, miss_cache_size: int = 10_000
    ) -> None:
        self.inner = inner
        self.hasher = hasher
        # Labels the last search did not find (an old key's, a user gone), bounded, and which
        # sessions that search went through: they are searched again only when those change.
        self._misses: OrderedDict[str, None] = OrderedDict()
        self._miss_cache_size = miss_cache_size
        self._misses_among: int | None = None

    @property
    def remembered_misses(self) -> int:
        """Labels remembered as matching no session."""
        return len(self._misses)

    async def snapshot(self) -> RegistrySnapshot:
        return _hashed(await self.inner.snapshot(), self.hasher)

    async def peek(self) -> RegistrySnapshot:
        return _hashed(await peek(self.inner), self.hasher)

    async def monitor_user(self, user_id: str) -> MonitorResult:
        real = await self._resolve(user_id)
        if real is None:
            return MonitorResult(Status.NO_SESSION, user_id)
        result = await self.inner.monitor_user(real)
        metrics = result.metrics
        if "user_id" in metrics:
            metrics = {**metrics, "user_id": user_id}
        return dataclasses.replace(result, user_id=user_id, metrics=metrics)

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        real = await self._resolve(user_id)
        if real is None:
            return CleanupResult(user_id=user_id, found=False)
        result = await self.inner.cleanup_user(real, if_violating=if_violating)
        return dataclasses.replace(result, user_id=user_id)

    async def look_up(self, user_ids: Collection[str]) -> None:
        """Find the ids behind every label of `user_ids` not known yet, in one search.

        The receiver calls it once per payload; the sessions are read once, and hashed only
        when a label is neither cached nor remembered as a miss among these same sessions.
        """
        wanted = {u for u in user_ids if u.startswith(PREFIX) and self.hasher.known(u) is None}
        if not wanted:
            return
        ids = _user_ids((await peek(self.inner)).sessions)
        among = hash(tuple(ids))  # cheap next to hashing: str hashes are cached
        if among != self._misses_among:
            self._misses.clear()
            self._misses_among = among
        wanted.difference_update(self._misses)
        if not wanted:
            return
        found = await asyncio.to_thread(self._search, ids, wanted)
        for label in wanted.difference(found):
            self._misses[label] = None
        while len(self._misses) > self._miss_cache_size:
            self._misses.popitem(last=False)

    async def _resolve(self, label: str) -> str | None:
        """The id behind an exported label; a clear id is not accepted."""
        if not label.startswith(PREFIX):
            return None
        known = self.hasher.known(label)
        if known is not None or label in self._misses:
            return known
        # Not rendered since the cache was emptied (or since a restart): hash the current
        # sessions again, off the loop, and look once more.
        await self.look_up((label,))
        return self.hasher.known(label)

    def _search(self, ids: Sequence[str], wanted: set[str]) -> set[str]:
        # Plain digests: a search through every session must not churn the bounded cache;
        # only what is found is remembered.
        digest = self.hasher.digest
        found = set()
        for user_id in ids:
            label = digest(user_id)
            if label in wanted:
                self.hasher.remember(user_id, label)
                found.add(label)
                if len(found) == len(wanted):
                    break
        return found


def _user_ids(sessions: Sequence[SessionLike]) -> Sequence[str]:
    if isinstance(sessions, SessionColumns):
        return sessions.user_ids
    return [s.user_id for s in sessions]


class PrivateWorkerSources(PrivateIdSource):
    """Sidecar mode: every worker's registry behind the same key (alerts name the worker)."""

    def __init__(self, inner: WorkerSources, hasher: UserIdHasher) -> None:
        super().__init__(inner, hasher)  # type: ignore[arg-type]
        self._workers = inner
        # One wrapper per worker, kept while that worker is: it remembers its misses.
        self._each: dict[str, tuple[RegistrySource, PrivateIdSource]] = {}

    def worker(self, name: str) -> RegistrySource | None:
        source = self._workers.worker(name)
        if source is None:
            self._each.pop(name, None)
            return None
        kept = self._each.get(name)
        if kept is None or kept[0] is not source:
            kept = self._each[name] = (source, PrivateIdSource(source, self.hasher))
        return kept[1]

    async def ready(self) -> str | None:
        return await self._workers.ready()

    def collect(self) -> Iterator[Metric]:
        return self._workers.collect()

    async def close(self) -> None:
        await self._workers.close()
