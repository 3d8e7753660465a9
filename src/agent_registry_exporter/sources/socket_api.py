"""The backend side of sidecar mode: each worker serves its registry on a Unix socket.

    GET  /v1/                           who serves this socket (worker, pid, start time)
    GET  /v1/snapshot                   thresholds, identity and the sessions as columns
    GET  /v1/snapshot?since=G&epoch=E   what changed since generation G of epoch E (a full
                                        snapshot when this registry cannot tell: another
                                        epoch, a forgotten or future generation)
    GET  /v1/users/{user_id}            the lifecycle manager's monitor_memory_usage result
    POST /v1/users/{user_id}/cleanup    check and detach in one step; a JSON body
                                        {"if_violating": false} makes it unconditional

User ids are percent-encoded path segments. Every error is a JSON body naming the problem;
a path under another version answers 404 with the versions this worker speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote_to_bytes

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from ..common.bodies import refuse_encoded_bodies
from ..common.json_errors import json_error, json_errors
from ..common.loggers import logger_name
from ..common.malformed import RequestLogger
from ..common.process import resident_memory_bytes
from ..registry import DEFAULT_LEAK_GRACE_SECONDS, AgentRegistry, Changes, RegistrySnapshot
from ..settings import DEFAULT_SOCKET_DIR, SOCKET_DIR_ENV
from .snapshot_codec import (
    API_VERSION,
    SNAPSHOT_CONTENT_TYPE,
    Position,
    WorkerIdentity,
    encode_delta,
    encode_snapshot,
)
from .snapshot_delta import cut_delta

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "SOCKET_DIR_ENV",
    "RegistrySocket",
    "create_registry_app",
    "delta_answer",
    "listening",
    "serve_registry",
    "socket_path",
]

_log = logging.getLogger(logger_name("sources.socket_api"))

_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# sockaddr_un.sun_path on Linux, terminating NUL included.
_MAX_SOCKET_PATH = 107
# Slots w0..w1023: more workers than that in one pod is a mistake, not a deployment.
_MAX_SLOTS = 1024
_MAX_CLEANUP_BODY = 4096
_VERSIONED = re.compile(r"^/(v\d+)(/|$)")
_GENERATION = re.compile(r"[0-9]{1,19}")
_MAX_GENERATION = 2**63 - 1
# A delta's rows are read in steps, the loop running between them (`snapshot_in_steps`),
# but its last step (the change log since the sidecar's generation, the rows changed
# meanwhile) and cutting and packing the delta are one: past this many changed users, a
# full snapshot (encoded in steps) instead. Measured at 100,000 users, the longest step of
# a delta answer: 0.4 ms at 1,000 changed users, 0.8 at 2,000, 2.2 at 5,000, 4.4 at 10,000
# (cut and pack alone 0.3, 0.5, 1.3, 3.0); in one step as before, 1.4, 2.6, 5.8 and 11 ms.
_MAX_DELTA = 5_000

_REGISTRY = web.AppKey("registry", AgentRegistry)
_IDENTITY = web.AppKey("identity", WorkerIdentity)
# One snapshot encoding at a time: a burst of requests queues instead of stalling the loop.
_ENCODING = web.AppKey("encoding", asyncio.Lock)
_LEAK_GRACE = web.AppKey("leak_grace_seconds", float)


class _CleanupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    if_violating: bool = True


class _BadUserId(ValueError):
    pass


class _BadQuery(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def socket_path(socket_dir: Path | str, worker: str) -> Path:
    """Where `worker` serves its registry in `socket_dir`."""
    return Path(socket_dir) / f"worker-{worker}.sock"


def create_registry_app(
    registry: AgentRegistry,
    identity: WorkerIdentity,
    *,
    leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS,
) -> web.Application:
    """The registry API of one worker (served on its socket by `serve_registry`)."""
    app = web.Application(
        client_max_size=_MAX_CLEANUP_BODY, middlewares=[refuse_encoded_bodies, _json_errors]
    )
    app[_REGISTRY] = registry
    app[_IDENTITY] = identity
    app[_ENCODING] = asyncio.Lock()
    app[_LEAK_GRACE] = leak_grace_seconds
    app.router.add_get(f"/{API_VERSION}/", _identity)
    app.router.add_get(f"/{API_VERSION}/snapshot", _snapshot)
    app.router.add_get(f"/{API_VERSION}/users/{{user_id}}", _user)
    app.router.add_post(f"/{API_VERSION}/users/{{user_id}}/cleanup", _cleanup)
    return app


def _translate(request: web.Request, exc: Exception) -> web.StreamResponse | None:
    if isinstance(exc, _BadUserId):
        return json_error(400, str(exc))
    if isinstance(exc, _BadQuery):
        return json_error(400, str(exc), parameter=exc.parameter)
    if isinstance(exc, web.HTTPNotFound):
        version = _VERSIONED.match(request.path)
        if version is None or version[1] != API_VERSION:
            asked = version[1] if version else "none"
            return json_error(
                404,
                f"unknown API version {asked!r}: this worker speaks {API_VERSION}",
                versions=[API_VERSION],
            )
        return json_error(404, f"no such endpoint: {request.method} {request.path}")
    return None


_json_errors = json_errors(_log, whose_log="the worker's log", translate=_translate)


def _user_id(request: web.Request) -> str:
    # From the raw path: aiohttp leaves undecodable escapes as they are, which would make
    # "%FF" and "%25FF" the same user.
    raw = request.rel_url.raw_path.split("/")[3]
    try:
        user_id = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise _BadUserId(f"user id {raw!r} is not percent-encoded UTF-8") from None
    if not user_id:
        raise _BadUserId("user id is empty")
    return user_id


async def _identity(request: web.Request) -> web.Response:
    return web.json_response({"api": API_VERSION, **request.app[_IDENTITY].as_dict()})


def _one(request: web.Request, name: str) -> str | None:
    values = request.rel_url.query.getall(name, [])
    if len(values) > 1:
        raise _BadQuery(name, f"{name} given {len(values)} times: give it once")
    return values[0] if values else None


def _since(request: web.Request) -> tuple[int, str] | None:
    """The generation and epoch the sidecar holds; None: it asks for a full snapshot (an
    older sidecar, or one without columns). A `since` without `epoch` cannot prove it came
    from this registry: a full snapshot."""
    since, epoch = _one(request, "since"), _one(request, "epoch")
    if since is None:
        return None
    if not _GENERATION.fullmatch(since) or int(since) > _MAX_GENERATION:
        raise _BadQuery(
            "since", f"since must be a generation: an integer from 0 to 2**63-1, not {since!r}"
        )
    return None if epoch is None else (int(since), epoch)


async def _snapshot(request: web.Request) -> web.Response:
    app = request.app
    asked = _since(request)  # a bad query is refused before anything is read
    async with app[_ENCODING]:
        # Read once the lock is ours, so a queued request does not send stale data.
        body = None if asked is None else await _delta(app, *asked)
        if body is None:
            body = await _full(app)
    return web.Response(body=body, content_type=SNAPSHOT_CONTENT_TYPE)


async def _delta(app: web.Application, since: int, epoch: str) -> bytes | None:
    """The delta since generation `since` of `epoch`, its rows read in steps; None when
    another process's registry (another epoch) asked: a full snapshot answers."""
    registry = app[_REGISTRY]
    if epoch != registry.epoch:
        return None
    snapshot = await registry.snapshot_in_steps(
        leak_grace_seconds=app[_LEAK_GRACE],
        since=since,
        copy_sessions=False,
        max_changes=_MAX_DELTA,
    )
    if snapshot.changes is None:  # a generation unknown here, or too many changes: full
        return await _encoded_full(app, snapshot)
    # No await from here to the bytes: the snapshot's sessions are left uncopied, true only
    # until the registry changes.
    return delta_answer(_with_memory(snapshot), app[_IDENTITY])


async def _full(app: web.Application) -> bytes:
    return await _encoded_full(app, app[_REGISTRY].snapshot(leak_grace_seconds=app[_LEAK_GRACE]))


async def _encoded_full(app: web.Application, snapshot: RegistrySnapshot) -> bytes:
    """A full snapshot (every session copied) taken with no await since, encoded in steps
    at the registry's position (the snapshot's, with no await between)."""
    registry = app[_REGISTRY]
    position = Position(registry.epoch, registry.generation)
    return await encode_snapshot(_with_memory(snapshot), app[_IDENTITY], position)


def _with_memory(snapshot: RegistrySnapshot) -> RegistrySnapshot:
    return dataclasses.replace(snapshot, resident_memory_bytes=resident_memory_bytes())


def _too_many(changes: Changes) -> bool:
    return changes.users > _MAX_DELTA


def delta_answer(snapshot: RegistrySnapshot, identity: WorkerIdentity) -> bytes | None:
    """The encoded delta of `snapshot`, one taken with `since` (its changes, the changed
    users' rows, its totals, the sessions at its end), cut and packed in one step: call it
    with no await since the snapshot was taken, whose sessions may be a `SessionsAt`. None
    when a full snapshot must answer instead (no changes known, or more than a delta is
    worth)."""
    changes, rows, totals = snapshot.changes, snapshot.changed_rows, snapshot.totals
    if changes is None or rows is None or totals is None or _too_many(changes):
        return None
    delta = cut_delta(
        snapshot.sessions,
        rows.get,
        since=changes.since,
        changed=changes.changed,
        removed=changes.removed,
        totals=totals,
    )
    return encode_delta(snapshot, identity, Position(changes.epoch, changes.generation), delta)


async def _user(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    result = await request.app[_REGISTRY].lifecycle_manager.monitor_memory_usage(user_id)
    return web.json_response(result)


async def _cleanup(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await request.read()
    try:
        asked = _CleanupRequest.model_validate_json(body) if body.strip() else _CleanupRequest()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        return json_error(400, 'cleanup body must be {"if_violating": bool}', problems=problems)
    manager = request.app[_REGISTRY].lifecycle_manager
    # Shielded: once the session is detached its agents must be closed, even if the sidecar
    # hangs up or the worker shuts down meanwhile.
    result = await asyncio.shield(manager.trigger_cleanup(user_id, if_violating=asked.if_violating))
    return web.json_response(dataclasses.asdict(result))


class RegistrySocket:
    """A worker's registry served on a socket for the sidecar, or waiting to be.

    `serving` says whether the socket is bound and `problem` why not; `worker` and `path`
    are set once it is bound (`await wait_serving()` waits for that). `await stop()` closes
    it, or ends the retries, and removes the socket file.
    """

    def __init__(
        self,
        make_app: Callable[[WorkerIdentity], web.Application],
        directory: Path,
        name: str | None,
        retry_seconds: float,
    ) -> None:
        self.worker: str | None = None
        self.path: Path | None = None
        self.problem: str | None = None
        self._make_app = make_app
        self._directory = directory
        self._name = name
        self._retry_seconds = retry_seconds
        self._runner: web.AppRunner | None = None
        self._lock: int | None = None  # the slot's lock, held while serving
        self._inode = 0
        self._retry: asyncio.Task[None] | None = None
        self._stopped = False
        self._served = asyncio.Event()

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def wait_serving(self) -> None:
        """Return once the socket serves (at once if it does)."""
        await self._served.wait()

    async def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
        assert self.path is not None
        # Only our own socket: a successor with the same name may have replaced it.
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        self._release()

    def __repr__(self) -> str:
        if self.path is None:
            return f"RegistrySocket(waiting, problem={self.problem!r})"
        return f"RegistrySocket(worker={self.worker!r}, path={str(self.path)!r})"

    async def _bind(self) -> None:
        """Claim the name, bind the socket; OSError (nothing left behind) when it cannot."""
        _make_directory(self._directory)
        name, self._lock = _claim(self._directory, self._name)
        try:
            path = socket_path(self._directory, name)
            _prepare(path)
            identity = WorkerIdentity(worker=name, pid=os.getpid(), started_at=time.time())
            runner = web.AppRunner(
                self._make_app(identity),
                access_log=None,
                handle_signals=False,
                logger=RequestLogger(_log),  # a request it cannot parse: the client's doing
                auto_decompress=False,  # a body is never inflated (compressed ones are refused)
            )
            await runner.setup()
            try:
                await web.UnixSite(runner, str(path)).start()
                os.chmod(path, 0o660)  # the sidecar connects through the shared group
                self._inode = path.stat().st_ino
            except BaseException:
                await runner.cleanup()
                raise
        except BaseException:
            self._release()
            raise
        self._runner, self.worker, self.path, self.problem = runner, name, path, None
        self._served.set()
        _log.info("registry of worker %s served on %s", name, path)

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the kernel drops the flock with the descriptor
            self._lock = None

    def _waiting(self, exc: OSError) -> None:
        problem = _describe(exc, self._directory)
        if problem != self.problem:
            # Once per distinct problem, never once per retry.
            _log.warning(
                "registry socket not served yet: %s; the backend runs on and the socket is "
                "retried every %gs in the background%s",
                problem,
                self._retry_seconds,
                _fix(exc, self._directory),
            )
            self.problem = problem

    async def _retry_until_bound(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._retry_seconds)
            try:
                await self._bind()
            except OSError as exc:
                self._waiting(exc)
                continue
            return


async def serve_registry(
    registry: AgentRegistry,
    socket_dir: Path | str | None = None,
    *,
    worker: str | None = None,
    leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS,
    strict: bool = False,
    retry_seconds: float = 5.0,
) -> RegistrySocket:
    """Serve `registry` on `<socket_dir>/worker-<worker>.sock` for the sidecar (mode 0660).

    Returns at once, and never stops the backend: when the socket directory cannot be used
    (missing permissions, a file in the way, a live worker with the same name) the problem
    is logged once with its fix and the socket is retried every `retry_seconds` on the
    caller's event loop; the handle's `serving` and `problem` say which. `strict=True`
    raises that OSError instead. A bad name or path raises ValueError either way.

    `worker` defaults to the lowest free slot, `w0`, `w1`, ...: each worker holds a lock
    on its slot that the kernel releases when the process dies, so a respawned worker
    takes its predecessor's name. `socket_dir` defaults to
    `$AGENT_REGISTRY_EXPORTER_SOCKET_DIR`, else `/run/agent-registry` (created if missing).
    Cleaned agents still alive `leak_grace_seconds` after their cleanup are counted in the
    worker, where they live (the sidecar's own setting applies to embedded mode only).
    """
    if worker is not None and not _WORKER_NAME.fullmatch(worker):
        raise ValueError(
            f"worker name {worker!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it becomes a file name and a label value)"
        )
    if not retry_seconds > 0:
        raise ValueError(f"retry_seconds must be above 0, not {retry_seconds!r}")
    directory = Path(socket_dir or os.environ.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR)
    longest = socket_path(directory, worker or _slot(_MAX_SLOTS - 1))
    if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
        raise ValueError(f"socket path {str(longest)!r} is longer than {_MAX_SOCKET_PATH} bytes")
    handle = RegistrySocket(
        functools.partial(create_registry_app, registry, leak_grace_seconds=leak_grace_seconds),
        directory,
        worker,
        retry_seconds,
    )
    try:
        await handle._bind()
    except OSError as exc:
        if strict:
            raise
        handle._waiting(exc)
        handle._retry = asyncio.get_running_loop().create_task(handle._retry_until_bound())
    return handle


def _make_directory(directory: Path) -> None:
    """Create `directory` group-writable whatever the umask: the sidecar shares only the
    workers' group and removes dead workers' sockets. An existing one keeps its mode."""
    try:
        directory.mkdir(mode=0o770, parents=True)
    except FileExistsError:
        if not directory.is_dir():
            raise
        return
    os.chmod(directory, 0o770)  # noqa: S103 - the workers' group only, as its sockets


def _slot(n: int) -> str:
    return f"w{n}"


def _claim(directory: Path, name: str | None) -> tuple[str, int]:
    """Lock `name` (or the lowest free slot) in `directory`: (name, the lock's descriptor).

    flock belongs to the open file, so the kernel releases it when the process dies,
    however it dies; a slot whose socket a live worker serves without the lock (one
    started before slots existed) is skipped too.
    """
    for candidate in [name] if name is not None else map(_slot, range(_MAX_SLOTS)):
        lock = directory / f"worker-{candidate}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if name is not None:
                raise FileExistsError(
                    f"{socket_path(directory, name)} is served by a live worker: "
                    "choose another worker name"
                ) from None
            continue
        except BaseException:
            os.close(fd)
            raise
        if name is None and listening(socket_path(directory, candidate)):
            os.close(fd)
            continue
        return candidate, fd
    raise FileExistsError(f"all {_MAX_SLOTS} worker slots in {directory} are taken")


def _describe(exc: OSError, directory: Path) -> str:
    if exc.filename is not None and exc.strerror:
        return f"cannot create {exc.filename}: {exc.strerror}"
    return str(exc)


def _fix(exc: OSError, directory: Path) -> str:
    if isinstance(exc, FileExistsError) and exc.filename is None:
        return ""  # a live worker holds the name: the message says what to do
    if isinstance(exc, PermissionError):
        return (
            f". Fix: make {directory} writable by this process (in Kubernetes: mount the "
            "socket emptyDir there in this container)"
        )
    return f". Fix: make {directory} a directory this process may create files in"


def listening(path: Path) -> bool:
    """True when a process accepts connections on the Unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def _prepare(path: Path) -> None:
    """Remove a dead predecessor's socket, never a live one or a file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    if listening(path):
        raise FileExistsError(f"{path} is served by a live worker: choose another worker name")
    path.unlink()
