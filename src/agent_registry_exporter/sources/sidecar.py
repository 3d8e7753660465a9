"""The sidecar's source: every worker socket in a directory, gathered at each scrape.

Workers are never merged: the snapshot holds one part per worker that answered, each
rendered with its `worker` label. A worker that fails or is slow only marks itself down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..common.loggers import logger_name
from ..exporting import catalogue
from ..registry import CleanupResult, MonitorResult, RegistrySnapshot, SessionLike, Thresholds
from ..settings import Settings
from .deadline import time_left
from .socket_api import listening, socket_path
from .worker_client import WorkerError, WorkerSource

__all__ = ["SidecarSource", "discover_workers", "socket_dir_problem"]

_log = logging.getLogger(logger_name("sources.sidecar"))

_PREFIX, _SUFFIX = socket_path("", "*").name.split("*")
_MAX_ANSWER_BYTES: int = Settings.model_fields["max_worker_answer_bytes"].default


@dataclass
class _Health:
    up: bool = False
    duration: float = 0.0
    refused_in_a_row: int = 0
    problem: str | None = None


class _AllWorkersSessions(Sequence[SessionLike]):
    """Every worker's sessions side by side (what the breaker counts), read through the
    workers' own columns: nothing is copied at a scrape, which never reads it."""

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[RegistrySnapshot, ...]) -> None:
        self._parts = tuple(p.sessions for p in parts)

    def __len__(self) -> int:
        return sum(map(len, self._parts))

    def __iter__(self) -> Iterator[SessionLike]:
        return itertools.chain.from_iterable(self._parts)

    @overload
    def __getitem__(self, index: int) -> SessionLike: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SessionLike]: ...
    def __getitem__(self, index: int | slice) -> SessionLike | Sequence[SessionLike]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
        for part in self._parts:
            if 0 <= index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError("session index out of range")


def discover_workers(socket_dir: Path) -> dict[str, Path]:
    """The worker sockets in `socket_dir` by worker name; OSError when it cannot be read.

    A socket is one worker however many names it has (hard links): it is listed once,
    under the name it was served on.
    """
    return _scan(socket_dir)[0]


def _scan(socket_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The workers, and each other name of a worker's socket -> the worker's name."""
    names: dict[tuple[int, int], list[tuple[str, Path]]] = {}
    for path in socket_dir.iterdir():
        name = path.name
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISSOCK(info.st_mode):
            worker = name[len(_PREFIX) : -len(_SUFFIX)]
            names.setdefault((info.st_dev, info.st_ino), []).append((worker, path))
    found: dict[str, Path] = {}
    links: dict[str, str] = {}
    for same in names.values():
        same.sort()
        worker, path = same[0] if len(same) == 1 else _served_name(same)
        found[worker] = path
        links.update((other, worker) for other, _ in same if other != worker)
    return dict(sorted(found.items())), links


def _served_name(same: list[tuple[str, Path]]) -> tuple[str, Path]:
    """Of the names of one socket, the one its listener bound (the kernel keeps that path:
    it is the peer address a client sees); the first by name when nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a full backlog must not stall discovery
        try:
            probe.connect(str(same[0][1]))
            bound = probe.getpeername()
        except OSError:
            return same[0]
    for worker, path in same:
        if isinstance(bound, str) and Path(bound).name == path.name:
            return worker, path
    return same[0]


def socket_dir_problem(socket_dir: Path) -> str | None:
    """Why the sidecar cannot list `socket_dir` (missing, not a directory, no permission)."""
    try:
        discover_workers(socket_dir)
    except OSError as exc:
        return f"socket directory {socket_dir} cannot be read: {exc.strerror or exc}"
    return None


class SidecarSource:
    """The registries of all workers serving a socket in `socket_dir` (sidecar mode).

    Each worker is asked under `timeout`, and at most `max_answer_bytes` of its answer is
    read; a socket refusing connections `remove_after` times in a row belongs to a dead
    worker and is removed.
    """

    def __init__(
        self,
        socket_dir: Path,
        *,
        timeout: float = 5.0,
        remove_after: int = 3,
        max_answer_bytes: int = _MAX_ANSWER_BYTES,
    ) -> None:
        self.socket_dir = Path(socket_dir)
        self.timeout = timeout
        self.remove_after = remove_after
        self.max_answer_bytes = max_answer_bytes
        self._workers: dict[str, WorkerSource] = {}
        self._health: dict[str, _Health] = {}
        self._removed = 0
        self._found = 0  # worker sockets found by the last snapshot
        self._dir_problem: str | None = None
        self._links: dict[str, str] = {}
        # Workers whose dead socket a background task is removing.
        self._removing: set[str] = set()
        # Clients of workers that went away, closing; referenced until they are closed.
        self._closing: set[asyncio.Task[None]] = set()

    # --- RegistrySource -------------------------------------------------------------------

    async def snapshot(self) -> RegistrySnapshot:
        """One part per worker that answered; never raises for a worker's failure."""
        return await self._gather(lambda worker: worker.snapshot())

    async def peek(self) -> RegistrySnapshot:
        """As `snapshot`, each worker read by `WorkerSource.peek`: the next snapshot still
        carries each worker's changes since the previous one (the renderer's)."""
        return await self._gather(lambda worker: worker.peek())

    async def _gather(
        self, read: Callable[[WorkerSource], Awaitable[RegistrySnapshot]]
    ) -> RegistrySnapshot:
        found = self._discover()
        self._found = len(found)
        # A socket being removed is dead already (refused again and again): not asked.
        workers = {n: w for n, w in found.items() if n not in self._removing}
        changes: list[tuple[WorkerSource, str | None]] = []
        # Every worker within its own timeout, and all of them within the scrape's deadline:
        # a late one is down for this scrape (no older answer of it is shown instead).
        left = time_left()
        budget = self.timeout if left is None else min(self.timeout, left)
        asked = {
            asyncio.ensure_future(self._snapshot_of(w, read, changes)): w for w in workers.values()
        }
        done, late = await asyncio.wait(asked, timeout=budget) if asked else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in late:
            worker = asked[task]
            health = self._health.setdefault(worker.worker, _Health())
            health.up, health.duration, health.refused_in_a_row = False, budget, 0
            _note(worker, health, f"no answer within {budget:g}s", changes)
        _report(changes)
        self._remove_dead(workers.values())
        results = [task.result() for task in asked if task in done]
        parts = tuple(part for part in results if part is not None)
        return RegistrySnapshot(
            taken_at=time.time(),
            thresholds=parts[0].thresholds if parts else Thresholds(),
            sessions=_AllWorkersSessions(parts),
            workers=parts,
        )

    async def monitor_user(self, user_id: str) -> MonitorResult:
        return MonitorResult.failed(user_id, "sidecar mode: the alert must name a worker")

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        raise LookupError("sidecar mode: a cleanup must name a worker (see `worker()`)")

    # --- WorkerSources ----------------------------------------------------------------------

    def worker(self, name: str) -> WorkerSource | None:
        return self._discover().get(name)

    async def ready(self) -> str | None:
        workers = self._discover()
        if not workers:
            return self._dir_problem or f"no worker socket in {self.socket_dir}"

        async def answers(worker: WorkerSource) -> bool:
            try:
                await worker.identity()
            except WorkerError:
                return False
            return True

        if any(await asyncio.gather(*(answers(w) for w in workers.values()))):
            return None
        return f"none of {len(workers)} workers in {self.socket_dir} answers"

    # --- metrics ----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The sidecar's view of its workers, fresh at every scrape (prometheus_client)."""
        c = catalogue
        up = GaugeMetricFamily(c.SOURCE_UP.name, c.SOURCE_UP.help, labels=c.SOURCE_UP.labels)
        duration = GaugeMetricFamily(
            c.SOURCE_SCRAPE_DURATION.name,
            c.SOURCE_SCRAPE_DURATION.help,
            labels=c.SOURCE_SCRAPE_DURATION.labels,
            unit=c.SOURCE_SCRAPE_DURATION.unit,
        )
        for name, health in sorted(self._health.items()):
            up.add_metric([name], 1.0 if health.up else 0.0)
            duration.add_metric([name], health.duration)
        found = GaugeMetricFamily(c.SOURCE_WORKERS.name, c.SOURCE_WORKERS.help, value=self._found)
        removed = CounterMetricFamily(
            c.SOURCE_SOCKETS_REMOVED.name, c.SOURCE_SOCKETS_REMOVED.help, value=self._removed
        )
        yield from (up, duration, found, removed)

    async def settled(self) -> None:
        """Wait for what scrapes left running: removals of dead sockets, clients closing."""
        while self._closing:
            await asyncio.gather(*self._closing)

    async def close(self) -> None:
        await self.settled()
        for worker in self._workers.values():
            await worker.close()
        self._workers.clear()

    # --- internals --------------------------------------------------------------------------

    def _discover(self) -> dict[str, WorkerSource]:
        try:
            found, links = _scan(self.socket_dir)
        except OSError as exc:
            self._note_dir_problem(
                f"socket directory {self.socket_dir} cannot be read: {exc.strerror or exc}"
            )
            found, links = {}, {}
        else:
            self._note_dir_problem(None)
        for link in sorted(links.keys() - self._links.keys()):
            _log.warning(
                "ignoring %s in %s: another name (a hard link) for the socket of worker %s",
                socket_path("", link).name,
                self.socket_dir,
                links[link],
            )
        self._links = links
        for name in set(self._workers) - set(found):
            worker = self._workers.pop(name)
            self._health.pop(name, None)
            self._in_background(worker.close())
        for name, path in found.items():
            known = self._workers.get(name)
            if known is None or known.path != path:
                self._workers[name] = WorkerSource(
                    name, path, timeout=self.timeout, max_answer_bytes=self.max_answer_bytes
                )
        return dict(self._workers)

    def _note_dir_problem(self, problem: str | None) -> None:
        if problem != self._dir_problem:
            if problem is not None:
                _log.warning(problem)
            elif self._dir_problem is not None:
                _log.info("socket directory %s readable again", self.socket_dir)
            self._dir_problem = problem

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _snapshot_of(
        self,
        worker: WorkerSource,
        read: Callable[[WorkerSource], Awaitable[RegistrySnapshot]],
        changes: list[tuple[WorkerSource, str | None]],
    ) -> RegistrySnapshot | None:
        health = self._health.setdefault(worker.worker, _Health())
        started = time.perf_counter()
        try:
            snapshot = await read(worker)
        except WorkerError as exc:
            health.up, health.duration = False, time.perf_counter() - started
            health.refused_in_a_row = health.refused_in_a_row + 1 if exc.refused else 0
            _note(worker, health, exc.cause, changes)
            return None
        health.up, health.duration = True, time.perf_counter() - started
        health.refused_in_a_row = 0
        _note(worker, health, None, changes)
        return snapshot

    def _remove_dead(self, workers: Iterable[WorkerSource]) -> None:
        """Remove, off the scrape, the sockets refused `remove_after` times in a row."""
        dead = [
            w
            for w in workers
            if w.worker not in self._removing
            and (health := self._health.get(w.worker)) is not None
            and health.refused_in_a_row >= self.remove_after
        ]
        if dead:
            self._removing.update(w.worker for w in dead)
            self._in_background(self._remove(dead))

    async def _remove(self, dead: list[WorkerSource]) -> None:
        try:
            # A check and an unlink per socket: thousands of them must not stall the loop.
            removed = await asyncio.to_thread(_unlink_unserved, [w.path for w in dead])
        finally:
            self._removing.difference_update(w.worker for w in dead)
        gone = [w for w in dead if w.path in removed]
        for worker in gone:
            if self._workers.get(worker.worker) is worker:
                del self._workers[worker.worker]
                self._health.pop(worker.worker, None)
            await worker.close()
        self._removed += len(gone)
        if len(gone) == 1:
            _log.warning(
                "removed the socket of dead worker %s after %d refused connections: %s",
                gone[0].worker,
                self.remove_after,
                gone[0].path,
            )
        elif gone:
            _log.warning(
                "removed the sockets of %d dead workers after %d refused connections each: %s",
                len(gone),
                self.remove_after,
                _listed(w.worker for w in gone),
            )


def _unlink_unserved(paths: list[Path]) -> set[Path]:
    """Unlink each socket nobody listens on; checked right before: a new worker may have
    taken the name meanwhile."""
    removed = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if not listening(path):
                path.unlink()
                removed.add(path)
    return removed


def _note(
    worker: WorkerSource,
    health: _Health,
    problem: str | None,
    changes: list[tuple[WorkerSource, str | None]],
) -> None:
    # Reported when a worker's state changes, never once per scrape.
    if problem != health.problem:
        if problem is not None or health.problem is not None:
            changes.append((worker, problem))
        health.problem = problem


def _report(changes: list[tuple[WorkerSource, str | None]]) -> None:
    """One line for the workers that went down in a scrape, one for those back up."""
    down = [(w, p) for w, p in changes if p is not None]
    up = [w for w, p in changes if p is None]
    if len(down) == 1:
        worker, problem = down[0]
        _log.warning("worker %s (%s): %s", worker.worker, worker.path, problem)
    elif down:
        causes: dict[str, list[str]] = {}
        for worker, problem in down:
            causes.setdefault(problem or "", []).append(worker.worker)
        _log.warning(
            "%d workers down: %s",
            len(down),
            "; ".join(f"{cause}: {_listed(names)}" for cause, names in causes.items()),
        )
    if len(up) == 1:
        _log.info("worker %s answers again", up[0].worker)
    elif up:
        _log.info("%d workers answer again: %s", len(up), _listed(w.worker for w in up))


def _listed(names: Iterable[str], shown: int = 10) -> str:
    """The first names, and how many more: a line stays short whatever the count."""
    names = list(names)
    text = ", ".join(names[:shown])
    return f"{text} and {len(names) - shown} more" if len(names) > shown else text
