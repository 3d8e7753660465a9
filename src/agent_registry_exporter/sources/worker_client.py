"""The sidecar's side of one worker's registry socket: a `RegistrySource` over HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..registry import (
    Changes,
    CleanupResult,
    MonitorResult,
    RegistrySnapshot,
    SessionColumns,
)
from ..settings import Settings
from .snapshot_codec import (
    API_VERSION,
    SNAPSHOT_CONTENT_TYPE,
    Answer,
    Position,
    SnapshotFormatError,
    WorkerIdentity,
    decode_answer,
    is_delta,
)
from .snapshot_delta import DeltaMismatch, apply_delta

__all__ = ["WorkerError", "WorkerSource"]

_MAX_ANSWER_BYTES: int = Settings.model_fields["max_worker_answer_bytes"].default
_READ_SIZE = 1 << 20
_CLEANUP_FIELDS = frozenset(f.name for f in dataclasses.fields(CleanupResult))


class WorkerError(ConnectionError):
    """A worker's socket did not give a usable answer; `cause` is one line saying why."""

    def __init__(self, worker: str, cause: str, *, refused: bool = False) -> None:
        super().__init__(f"worker {worker}: {cause}")
        self.worker = worker
        self.cause = cause
        # The socket file is there but nobody listens: the worker died without removing it.
        self.refused = refused


@dataclasses.dataclass(frozen=True, slots=True)
class _Held:
    """A worker's last full columns and where its registry stood when they were true."""

    position: Position
    columns: SessionColumns


class WorkerSource:
    """One worker's registry, reached through its socket; each call bounded by `timeout`.

    It keeps the worker's last full columns and asks for what changed since: the worker
    encodes only that. `answers` counts the worker's answers by kind: `full`, `delta`, and
    `mismatch` (a delta that did not fit, replaced at once by a full snapshot).
    """

    def __init__(
        self,
        worker: str,
        path: Path,
        *,
        timeout: float = 5.0,
        max_answer_bytes: int = _MAX_ANSWER_BYTES,
    ) -> None:
        self.worker = worker
        self.path = path
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self.answers: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self._held: _Held | None = None
        # One snapshot exchange at a time: each delta applies to what the previous one left.
        self._exchange = asyncio.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.path)),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        self._held = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def identity(self) -> WorkerIdentity:
        """Who answers on the socket (a cheap call: readiness uses it)."""
        body = await self._json("GET", f"/{API_VERSION}/")
        try:
            return WorkerIdentity(str(body["worker"]), int(body["pid"]), float(body["started_at"]))
        except (KeyError, TypeError, ValueError):
            raise self._error("answers something else: no worker identity") from None

    async def snapshot(self) -> RegistrySnapshot:
        """The worker's sessions, exactly what a full snapshot gives: a delta is applied to
        the columns held (never changing the ones handed out before)."""
        async with self._exchange:
            # Only `self._held` refers to the columns: a full answer lets go of them before
            # it is decoded, so a worker's columns are never held twice.
            answer, columns = await self._read()
            self._held = None if answer.position is None else _Held(answer.position, columns)
            self.answers["full" if answer.delta is None else "delta"] += 1
        # Labelled with the socket's name, the one alerts route back by.
        return _for_the_renderer(
            dataclasses.replace(answer.snapshot, sessions=columns, worker=self.worker), answer
        )

    async def peek(self) -> RegistrySnapshot:
        """The worker's sessions now, for a reader that renders nothing (the webhook's
        search): a delta is applied to a copy and the held position stays, so the next
        `snapshot()` still carries every change since the previous one."""
        async with self._exchange:
            answer, columns = await self._read()
            if self._held is None and answer.position is not None and answer.delta is None:
                self._held = _Held(answer.position, columns)  # a full answer: the new base
        snapshot = dataclasses.replace(answer.snapshot, sessions=columns, worker=self.worker)
        return dataclasses.replace(snapshot, changes=None, changed_rows=None)

    async def _read(self) -> tuple[Answer, SessionColumns]:
        """The worker's answer asked from where the held columns stand, and the full columns
        it gives; a delta that does not fit is replaced at once by a full snapshot. Only
        `self._held` refers to the held columns, so a full answer lets go of them before it
        is decoded (see `_answer`)."""
        answer = await self._answer(None if self._held is None else self._held.position)
        try:
            return answer, self._columns(answer, self._held)
        except DeltaMismatch:
            self.answers["mismatch"] += 1
            answer = await self._answer(None)
            return answer, self._columns(answer, None)

    async def _answer(self, since: Position | None) -> Answer:
        path = f"/{API_VERSION}/snapshot"
        if since is not None:
            path += f"?since={since.generation}&epoch={quote(since.epoch, safe='')}"
        data = await self._fetch("GET", path, SNAPSHOT_CONTENT_TYPE)
        if not is_delta(data):
            self._held = None
        try:
            return decode_answer(data)
        except SnapshotFormatError as exc:
            raise self._error(f"answered an invalid snapshot: {exc}") from None

    def _columns(self, answer: Answer, held: _Held | None) -> SessionColumns:
        """The full columns `answer` gives, applied to `held` if it is a delta. A worker
        that ignores `since` (a release without deltas) answers full: taken as it is."""
        delta = answer.delta
        if delta is None:
            columns = answer.snapshot.sessions
            if not isinstance(columns, SessionColumns):  # pragma: no cover - decode's type
                raise self._error("answered a snapshot without columns")
            return columns
        if held is None:
            raise self._error("answered a delta to a request for a full snapshot")
        if answer.position is None or answer.position.epoch != held.position.epoch:
            raise DeltaMismatch("a delta of another epoch")
        if delta.since != held.position.generation:
            raise DeltaMismatch(f"a delta since {delta.since}, not {held.position.generation}")
        return apply_delta(held.columns, delta)

    async def monitor_user(self, user_id: str) -> MonitorResult:
        """The worker's check of one user; never raises (a failure is `Status.ERROR`).

        The wire format is `monitor_memory_usage`'s dict, as it always was: workers and
        sidecars of other releases understand each other.
        """
        try:
            body = await self._json("GET", _user_path(user_id))
            try:
                return MonitorResult.from_dict(body)
            except ValueError as exc:
                raise self._error(f"answered an invalid monitoring result: {exc}") from None
        except WorkerError as exc:
            return MonitorResult.failed(user_id, str(exc))

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        body = await self._json(
            "POST", f"{_user_path(user_id)}/cleanup", json={"if_violating": if_violating}
        )
        try:
            return CleanupResult(**{k: v for k, v in body.items() if k in _CLEANUP_FIELDS})
        except TypeError as exc:
            raise self._error(f"answered an invalid cleanup result: {exc}") from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = await self._fetch(method, path, "application/json", **kwargs)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise self._error(f"answered invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise self._error("answers something else: JSON that is not an object")
        return body

    async def _fetch(self, method: str, path: str, content_type: str, **kwargs: Any) -> bytearray:
        url = URL(f"http://worker-{self.worker}{path}", encoded=True)
        try:
            async with self._client().request(method, url, **kwargs) as resp:
                status, received = resp.status, resp.content_type
                data = await self._read_bounded(resp)
        except WorkerError:
            raise
        except Exception as exc:
            raise _translate(self, exc) from None
        if status == 200 and received == content_type:
            return data
        detail: Any = None
        if received == "application/json":
            with contextlib.suppress(ValueError):
                detail = json.loads(data)
        if isinstance(detail, dict) and "versions" in detail:
            raise self._error(
                f"speaks API versions {', '.join(map(str, detail['versions']))}; this sidecar"
                f" speaks {API_VERSION}"
            )
        if isinstance(detail, dict) and "error" in detail:
            raise self._error(f"answered HTTP {status}: {detail['error']}")
        raise self._error(
            f"answers something else: HTTP {status} {received or 'without a content type'}"
        )

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytearray:
        """The answer, read into one buffer: chunks kept and then joined would cost twice
        its size, for every worker at once. A socket answering something else may stream
        without end: no more than `max_answer_bytes` is read."""
        limit = self.max_answer_bytes
        expected = resp.content_length
        if expected is not None and expected > limit:
            raise self._error(f"answers {expected} bytes, more than {limit}")
        # Sized by the announced length (bounded above), else grown in place as it comes.
        buffer = bytearray(expected or 0)
        size = 0
        async for chunk in resp.content.iter_chunked(_READ_SIZE):
            end = size + len(chunk)
            if end > limit:
                raise self._error(f"answers more than {limit} bytes")
            buffer[size:end] = chunk
            size = end
        if size < len(buffer):
            raise self._error(f"closed the connection after {size} of {expected} bytes")
        return buffer

    def _error(self, cause: str, *, refused: bool = False) -> WorkerError:
        return WorkerError(self.worker, cause, refused=refused)


def _for_the_renderer(snapshot: RegistrySnapshot, answer: Answer) -> RegistrySnapshot:
    """`snapshot` with the worker's position and, from a delta, what changed, as the
    in-process snapshot carries them: the renderer then re-renders only those users."""
    position, delta = answer.position, answer.delta
    if position is None:
        return snapshot
    if delta is None:
        return dataclasses.replace(snapshot, epoch=position.epoch, generation=position.generation)
    rows = delta.rows
    changes = Changes(
        position.epoch,
        delta.since,
        position.generation,
        frozenset(rows.user_ids),
        frozenset(delta.removed),
    )
    return dataclasses.replace(
        snapshot,
        epoch=position.epoch,
        generation=position.generation,
        changes=changes,
        changed_rows={row.user_id: row for row in rows},
        totals=(delta.users, delta.agents),
    )


def _user_path(user_id: str) -> str:
    return f"/{API_VERSION}/users/{quote(user_id, safe='')}"


def _translate(source: WorkerSource, exc: Exception) -> Exception:
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return source._error("connection refused: no process listens", refused=True)
        if isinstance(os_error, FileNotFoundError):
            return source._error("socket is gone")
        if isinstance(os_error, PermissionError):
            return source._error(
                "permission denied on the socket: run the sidecar in the workers' group "
                "(the socket is mode 0660)"
            )
        return source._error(f"cannot connect: {os_error.strerror or os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return source._error("closed the connection before answering (worker died?)")
    if isinstance(exc, aiohttp.ClientOSError):
        return source._error(f"connection failed: {exc.strerror or exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return source._error(f"no answer within {source.timeout:g}s")
    if isinstance(exc, aiohttp.ClientError):
        return source._error(f"answers something else: {type(exc).__name__}: {exc}")
    return exc
