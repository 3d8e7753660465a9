"""The registry socket API (backend side of sidecar mode), over a real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import signal
import stat
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from agent_registry_exporter import (
    AgentRegistry,
    MonitorResult,
    RegistrySnapshot,
    RegistrySocket,
    SessionRow,
    Status,
    Thresholds,
    serve_registry,
)
from agent_registry_exporter.common.loggers import logger_name
from agent_registry_exporter.registry import SessionColumns
from agent_registry_exporter.sources import (
    WorkerError,
    WorkerSource,
    discover_workers,
    socket_path,
    worker_client,
)
from agent_registry_exporter.sources.snapshot_codec import (
    SNAPSHOT_CONTENT_TYPE,
    Answer,
    Delta,
    Position,
    WorkerIdentity,
    decode_answer,
    encode_delta,
    encode_snapshot,
)
from agent_registry_exporter.sources.socket_api import listening
from agent_registry_exporter.testing import wait_until_async

from .conftest import RecordingAgent, add_agents, assert_kept_or_closed_once
from .released_snapshot_decoder import released_decode
from .test_sidecar import FakeWorker

HOSTILE_IDS = ["a/b", "50%", "x y?z#w", 'quo"te\\', "new\nline", "nul\x00byte", "..", "héllo 🦜"]


@pytest.fixture
async def served(registry: AgentRegistry, socket_dir: Path) -> AsyncIterator[RegistrySocket]:
    handle = await serve_registry(registry, socket_dir, worker="w1")
    yield handle
    await handle.stop()


@pytest.fixture
async def worker(served: RegistrySocket) -> AsyncIterator[WorkerSource]:
    client = WorkerSource("w1", served.path, timeout=10)
    yield client
    await client.close()


async def raw(path: Path, method: str, url: str, **kwargs: object) -> tuple[int, dict]:
    """One request on the socket, the status and JSON body."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
        session.request(method, f"http://worker{url}", **kwargs) as resp,  # type: ignore[arg-type]
    ):
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


class TestServeRegistry:
    async def test_socket_is_named_for_the_worker_with_mode_0660(self, served, socket_dir) -> None:
        """`<dir>/worker-<name>.sock`, readable and writable by owner and group only."""
        assert served.path == socket_dir / "worker-w1.sock"
        mode = served.path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660

    async def test_defaults_are_the_first_slot_and_the_directory_from_the_environment(
        self, registry, socket_dir, monkeypatch
    ) -> None:
        """No worker name: slot w0; no directory: AGENT_REGISTRY_EXPORTER_SOCKET_DIR."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_SOCKET_DIR", str(socket_dir / "sub"))
        handle = await serve_registry(registry)
        try:
            assert handle.worker == "w0"
            assert handle.path == socket_dir / "sub" / "worker-w0.sock"
            assert handle.path.exists()
        finally:
            await handle.stop()

    @pytest.mark.parametrize("umask", [0o022, 0o077])
    async def test_sockets_and_a_directory_it_creates_are_group_writable_whatever_the_umask(
        self, registry, socket_dir, umask: int
    ) -> None:
        """The sidecar shares only the workers' group (the patch's runAsGroup, no fsGroup):
        it connects to 0660 sockets and removes dead workers' sockets from a 0770 directory."""
        previous = os.umask(umask)
        try:
            handle = await serve_registry(registry, socket_dir / "made", worker="w1")
        finally:
            os.umask(previous)
        try:
            assert handle.path is not None
            assert stat.S_IMODE(handle.path.stat().st_mode) == 0o660
            assert stat.S_IMODE((socket_dir / "made").stat().st_mode) == 0o770
        finally:
            await handle.stop()

    async def test_an_existing_directory_keeps_its_mode(self, registry, socket_dir) -> None:
        """Only what it creates: the emptyDir (0777) or the operator's directory is left as is."""
        (socket_dir / "given").mkdir(mode=0o755)
        handle = await serve_registry(registry, socket_dir / "given", worker="w1")
        try:
            assert stat.S_IMODE((socket_dir / "given").stat().st_mode) == 0o755
        finally:
            await handle.stop()

    async def test_stop_removes_the_socket(self, registry, socket_dir) -> None:
        """After stop() the file is gone and nothing answers."""
        handle = await serve_registry(registry, socket_dir, worker="gone")
        await handle.stop()
        assert not handle.path.exists()
        await handle.stop()  # twice is harmless

    async def test_stale_socket_of_a_dead_worker_is_replaced(self, registry, socket_dir) -> None:
        """A socket file nobody listens on (a crashed predecessor) is taken over."""
        first = await serve_registry(registry, socket_dir, worker="w")
        await first._runner.cleanup()  # type: ignore[union-attr]  # dies without removing it
        first._release()  # as the kernel does for a dead process
        assert first.path.exists()
        second = await serve_registry(registry, socket_dir, worker="w")
        try:
            client = WorkerSource("w", second.path)
            assert (await client.identity()).worker == "w"
            await client.close()
        finally:
            await second.stop()

    async def test_live_socket_or_plain_file_is_never_taken_over(
        self, served, registry, socket_dir
    ) -> None:
        """A second worker with the same name, or a regular file there, is never replaced:
        an error when strict, else a handle that waits for the name to be free."""
        with pytest.raises(FileExistsError, match="live worker"):
            await serve_registry(registry, socket_dir, worker="w1", strict=True)
        (socket_dir / "worker-file.sock").write_text("not a socket")
        with pytest.raises(FileExistsError, match="not a socket"):
            await serve_registry(registry, socket_dir, worker="file", strict=True)
        waiting = await serve_registry(registry, socket_dir, worker="w1")
        try:
            assert not waiting.serving
            assert "live worker" in (waiting.problem or "")
            client = WorkerSource("w1", served.path)
            assert (await client.identity()).pid == os.getpid()
            await client.close()
        finally:
            await waiting.stop()
        assert served.path.exists()  # the live worker's socket was left alone

    @pytest.mark.parametrize("name", ["", "../up", "a/b", "x" * 65, "-leading", "spa ce"])
    async def test_unsafe_worker_names_are_refused(self, registry, socket_dir, name) -> None:
        """The name becomes a file name and a label value: only a safe alphabet."""
        with pytest.raises(ValueError, match="worker name"):
            await serve_registry(registry, socket_dir, worker=name)

    async def test_socket_path_too_long_is_refused(self, registry, socket_dir) -> None:
        """sun_path holds 107 bytes: a longer path is a clear error, not a truncated socket."""
        with pytest.raises(ValueError, match="longer than 107 bytes"):
            await serve_registry(registry, socket_dir / ("d" * 120), worker="w")


class _ForkedWorker:
    """A backend worker in a forked process, as a user the directory's mode applies to (root
    ignores permissions, so as root the child runs as nobody). It reports on a pipe:
    "waiting: <problem>" when serve_registry returned without serving, "serving <worker>"
    once it serves, and "log: <message>" for each line the socket API logs."""

    def __init__(self, socket_dir: Path) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read_end)
            try:
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                asyncio.run(self._serve(socket_dir, os.fdopen(write_end, "w", buffering=1)))
            finally:
                os._exit(0)
        os.close(write_end)
        self._pipe = os.fdopen(read_end)
        self.logged: list[str] = []

    @staticmethod
    async def _serve(socket_dir: Path, out: TextIO) -> None:  # pragma: no cover - the child
        class ToPipe(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                out.write(f"log: {record.getMessage()}\n")

        logger = logging.getLogger(logger_name("sources.socket_api"))
        logger.handlers, logger.propagate = [ToPipe()], False
        logger.setLevel(logging.INFO)
        handle = await serve_registry(AgentRegistry(), socket_dir, retry_seconds=0.05)
        if not handle.serving:
            out.write(f"waiting: {handle.problem}\n")
        await handle.wait_serving()
        out.write(f"serving {handle.worker}\n")
        await asyncio.Event().wait()

    def line(self) -> str:
        """The next report that is not a log line."""
        while line := self._pipe.readline():
            if not line.startswith("log: "):
                return line.rstrip("\n")
            self.logged.append(line.removeprefix("log: ").rstrip("\n"))
        raise AssertionError("the worker died")

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a crash ends a worker; harmless when already dead."""
        if self._pipe.closed:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.logged.extend(line.removeprefix("log: ").rstrip("\n") for line in self._pipe)
        self._pipe.close()


@pytest.fixture
def shared_dir(socket_dir: Path) -> Path:
    """A socket directory a worker process of another user may reach (as in a pod)."""
    socket_dir.chmod(0o755)
    shared = socket_dir / "sockets"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    return shared


class TestNeverStopsTheBackend:
    def test_unwritable_directory_returns_at_once_and_serves_once_made_writable(
        self, shared_dir: Path
    ) -> None:
        """serve_registry in a worker that may not write the directory returns (the backend
        boots), says why and what to do; once the directory is writable the socket appears
        without any call by the backend."""
        shared_dir.chmod(0o755)  # not writable by the worker's user
        worker = _ForkedWorker(shared_dir)
        try:
            waiting = worker.line()
            assert waiting.startswith("waiting: cannot create"), waiting
            assert "Permission denied" in waiting
            assert str(shared_dir) in waiting
            assert worker.alive()
            assert list(shared_dir.iterdir()) == []
            shared_dir.chmod(0o777)
            assert worker.line() == "serving w0"
            assert listening(shared_dir / "worker-w0.sock")
        finally:
            worker.kill()
        # Logged once, with the fix, however often it was retried meanwhile.
        (warning,) = [m for m in worker.logged if "not served yet" in m]
        assert f"Fix: make {shared_dir} writable by this process" in warning
        assert worker.logged[-1] == f"registry of worker w0 served on {shared_dir}/worker-w0.sock"

    async def test_a_directory_problem_raises_only_when_strict(self, registry, socket_dir) -> None:
        """strict=True raises the OSError; by default a handle that says why it waits."""
        blocker = socket_dir / "file"
        blocker.write_text("a file where the directory should be")
        with pytest.raises(OSError, match="file"):
            await serve_registry(registry, blocker / "sockets", worker="w", strict=True)
        handle = await serve_registry(registry, blocker / "sockets", worker="w")
        try:
            assert not handle.serving
            assert handle.worker is None
            assert handle.path is None
            assert str(blocker) in (handle.problem or "")
        finally:
            await handle.stop()

    async def test_socket_appears_once_the_directory_can_be_made(
        self, registry, socket_dir
    ) -> None:
        """The retry runs on the caller's loop; .worker and .path are set once bound."""
        blocker = socket_dir / "file"
        blocker.write_text("in the way")
        handle = await serve_registry(registry, blocker / "sockets", retry_seconds=0.01)
        try:
            assert not handle.serving
            blocker.unlink()
            await wait_until_async(lambda: handle.serving)
            assert handle.problem is None
            assert handle.worker == "w0"
            assert handle.path == blocker / "sockets" / "worker-w0.sock"
            client = WorkerSource("w0", handle.path)
            assert (await client.identity()).worker == "w0"
            await client.close()
        finally:
            await handle.stop()
        assert not (blocker / "sockets" / "worker-w0.sock").exists()

    async def test_stop_cancels_a_pending_retry(self, registry, socket_dir) -> None:
        """After stop() nothing is retried: no task left, no socket once the way is clear."""
        blocker = socket_dir / "file"
        blocker.write_text("in the way")
        before = asyncio.all_tasks()
        handle = await serve_registry(registry, blocker / "sockets", retry_seconds=0.01)
        assert len(asyncio.all_tasks() - before) == 1  # the retry
        await handle.stop()
        assert asyncio.all_tasks() - before == set()
        blocker.unlink()
        await asyncio.sleep(0.1)  # ten retry intervals
        assert not (blocker / "sockets").exists()
        assert not handle.serving

    async def test_bad_arguments_raise_even_when_not_strict(self, registry, socket_dir) -> None:
        """A bad name or an impossible path is the caller's bug: ValueError at once."""
        with pytest.raises(ValueError, match="worker name"):
            await serve_registry(registry, socket_dir, worker="a/b")
        with pytest.raises(ValueError, match="longer than 107 bytes"):
            await serve_registry(registry, socket_dir / ("d" * 120))


class TestWorkerSlots:
    async def test_unnamed_workers_take_the_lowest_free_slot(self, registry, socket_dir) -> None:
        """w0, w1; when w0 stops, the next worker is w0 again: never more names than workers."""
        first = await serve_registry(registry, socket_dir)
        second = await serve_registry(registry, socket_dir)
        try:
            assert (first.worker, second.worker) == ("w0", "w1")
            await first.stop()
            third = await serve_registry(registry, socket_dir)
            assert third.worker == "w0"
            await third.stop()
        finally:
            await first.stop()
            await second.stop()
        assert sorted(p.name for p in socket_dir.glob("*.sock")) == []

    async def test_a_slot_served_by_a_named_worker_is_skipped(self, registry, socket_dir) -> None:
        """A worker explicitly named w0 holds that name: the unnamed one takes w1."""
        named = await serve_registry(registry, socket_dir, worker="w0")
        unnamed = await serve_registry(registry, socket_dir)
        try:
            assert unnamed.worker == "w1"
        finally:
            await unnamed.stop()
            await named.stop()

    def test_a_respawned_worker_keeps_its_label(self, shared_dir: Path) -> None:
        """Kill -9 the worker on w0 (its socket stays behind): its replacement is w0 too,
        because the kernel released the dead worker's lock; the survivor stays w1."""
        workers = [_ForkedWorker(shared_dir)]
        try:
            assert workers[0].line() == "serving w0"
            workers.append(_ForkedWorker(shared_dir))
            assert workers[1].line() == "serving w1"
            workers[0].kill()
            assert (shared_dir / "worker-w0.sock").exists()
            workers.append(_ForkedWorker(shared_dir))
            assert workers[2].line() == "serving w0"
            assert sorted(discover_workers(shared_dir)) == ["w0", "w1"]
            assert workers[1].alive()
        finally:
            for worker in workers:
                worker.kill()


class TestSnapshot:
    async def test_sessions_thresholds_and_identity_round_trip(
        self, registry, worker, clock
    ) -> None:
        """Every session's id, count and start arrive exactly, with the worker's name."""
        for n, user in enumerate(HOSTILE_IDS):
            await add_agents(registry, user, n + 1, age_hours=n)
        snapshot = await worker.snapshot()
        assert snapshot.worker == "w1"
        assert snapshot.thresholds == registry.thresholds
        assert snapshot.taken_at == clock.now
        got = [(s.user_id, s.agent_count, s.created_timestamp) for s in snapshot.sessions]
        want = [(s.user_id, s.agent_count, s.created_timestamp) for s in registry.sessions()]
        assert got == want

    async def test_identity_names_the_process(self, worker) -> None:
        """GET /v1/ says which worker and process serve the socket."""
        identity = await worker.identity()
        assert (identity.worker, identity.pid) == ("w1", os.getpid())

    async def test_empty_registry_is_an_empty_snapshot(self, worker) -> None:
        """No sessions: zero rows, still the thresholds."""
        snapshot = await worker.snapshot()
        assert list(snapshot.sessions) == []
        assert snapshot.thresholds == Thresholds()

    async def test_concurrent_snapshot_requests_each_get_a_whole_snapshot(
        self, registry, served
    ) -> None:
        """Twenty at once while agents come and go: each answer decodes and is consistent."""
        for n in range(300):
            await add_agents(registry, f"u{n}", 2)
        clients = [WorkerSource("w1", served.path, timeout=30) for _ in range(20)]

        async def churn() -> None:
            for n in range(300):
                await registry.register_user_agent(f"u{n}", "extra", RecordingAgent())
                await asyncio.sleep(0)

        try:
            *snapshots, _ = await asyncio.gather(*(c.snapshot() for c in clients), churn())
        finally:
            for client in clients:
                await client.close()
        for snapshot in snapshots:
            assert len(snapshot.sessions) == 300
            assert {s.agent_count for s in snapshot.sessions} <= {2, 3}

    async def test_slow_client_does_not_hold_up_the_sidecar(self, served, worker) -> None:
        """A peer that sends half a request and stalls: the sidecar is still answered."""
        _, writer = await asyncio.open_unix_connection(str(served.path))
        writer.write(b"GET /v1/snapshot HTTP/1.1\r\nHost: w")
        await writer.drain()
        try:
            assert (await asyncio.wait_for(worker.identity(), 10)).worker == "w1"
        finally:
            writer.close()
            await writer.wait_closed()


class TestUser:
    @pytest.mark.parametrize("user", HOSTILE_IDS)
    async def test_any_user_id_reaches_its_own_session(self, registry, worker, user) -> None:
        """Slashes, percent signs, quotes, NUL: the id is one path segment, decoded exactly."""
        await add_agents(registry, user, 3)
        await add_agents(registry, user + "x", 1)
        result = await worker.monitor_user(user)
        assert result.status is Status.HEALTHY
        assert (result.user_id, result.metrics["agent_count"]) == (user, 3)

    async def test_violating_user_reports_its_issues(self, registry, worker) -> None:
        """The worker's check as a MonitorResult, issue strings included."""
        await add_agents(registry, "big", 51, age_hours=26)
        result = await worker.monitor_user("big")
        assert result.status is Status.WARNING
        assert result.issues == ("Too many agents: 51", "Session too old: 26.0h")

    async def test_unknown_user_has_no_session(self, worker) -> None:
        """An id nobody registered: no_session, and nothing is created."""
        assert (await worker.monitor_user("ghost")).status is Status.NO_SESSION

    async def test_wire_format_is_the_seed_dict(self, registry, served, fill) -> None:
        """Over the socket the answer stays monitor_memory_usage's dict: old sidecars read it."""
        await fill("big", 51)
        status, body = await raw(served.path, "GET", "/v1/users/big")
        assert status == 200
        assert body == await registry.lifecycle_manager.monitor_memory_usage("big")

    async def test_old_workers_answer_is_read(self, socket_dir) -> None:
        """A worker of an earlier release answers the same dict: the sidecar reads it."""
        seed = {"status": "warning", "user_id": "big", "metrics": {"agent_count": 51},
                "issues": ["Too many agents: 51"]}  # fmt: skip

        async def answer(request: web.Request) -> web.Response:
            return web.json_response(seed)

        path = socket_path(socket_dir, "old")
        async with FakeWorker(path, answer):
            client = WorkerSource("old", path, timeout=10)
            try:
                result = await client.monitor_user("big")
            finally:
                await client.close()
        assert result == MonitorResult(
            Status.WARNING, "big", {"agent_count": 51}, ("Too many agents: 51",)
        )

    @pytest.mark.parametrize(
        ("body", "problem"),
        [
            ({"status": "fine", "user_id": "u1"}, "unknown status 'fine'"),
            ({"user_id": "u1"}, "no status"),
            ({"status": "warning", "user_id": "u1", "issues": "many"}, "issues is not a list"),
        ],
    )
    async def test_answer_that_is_no_monitoring_result_is_an_error_status(
        self, socket_dir, body, problem
    ) -> None:
        """Something else on the socket: status error naming the worker and the problem."""

        async def answer(request: web.Request) -> web.Response:
            return web.json_response(body)

        path = socket_path(socket_dir, "odd")
        async with FakeWorker(path, answer):
            client = WorkerSource("odd", path, timeout=10)
            try:
                result = await client.monitor_user("u1")
            finally:
                await client.close()
        assert result.status is Status.ERROR
        assert result.user_id == "u1"
        assert result.error is not None
        assert "worker odd" in result.error
        assert problem in result.error

    @pytest.mark.parametrize("segment", ["%FF", "%C3%28", "%ED%A0%80"])
    async def test_id_that_is_not_utf8_is_a_400(self, served, segment) -> None:
        """Percent-escapes that do not decode as UTF-8 are refused, naming the id."""
        status, body = await raw(served.path, "GET", f"/v1/users/{segment}")
        assert status == 400
        assert "not percent-encoded UTF-8" in body["error"]

    async def test_worker_that_is_down_is_an_error_status_not_an_exception(
        self, served, worker
    ) -> None:
        """monitor_user never raises: a dead worker is status 'error' naming the cause."""
        await served.stop()
        result = await worker.monitor_user("u1")
        assert result.status is Status.ERROR
        assert result.error is not None
        assert "w1" in result.error


class TestCleanup:
    async def test_healthy_session_is_left_untouched_by_default(
        self, registry, worker, fill
    ) -> None:
        """Conditional by default: a session within every limit is not detached."""
        agents = await fill("calm", 50)
        result = await worker.cleanup_user("calm")
        assert result.found
        assert result.not_violating
        assert registry.get_session("calm").agent_count == 50
        assert {a.closes for a in agents} == {0}

    async def test_violating_session_is_cleaned(self, registry, worker, fill) -> None:
        """Over a limit: detached and every agent closed, the issues seen reported."""
        agents = await fill("greedy", 51)
        result = await worker.cleanup_user("greedy")
        assert (result.found, result.not_violating, result.agents_cleaned) == (True, False, 51)
        assert result.issues == ["Too many agents: 51"]
        assert registry.get_session("greedy") is None
        assert {a.closes for a in agents} == {1}

    async def test_unconditional_cleanup_only_when_asked(self, registry, served, fill) -> None:
        """{"if_violating": false} cleans a healthy session too."""
        agents = await fill("calm", 2)
        status, body = await raw(
            served.path, "POST", "/v1/users/calm/cleanup", json={"if_violating": False}
        )
        assert status == 200
        assert (body["found"], body["agents_cleaned"]) == (True, 2)
        assert registry.get_session("calm") is None
        assert {a.closes for a in agents} == {1}

    async def test_unknown_user_is_not_found(self, worker) -> None:
        """Nothing to clean: found is false."""
        result = await worker.cleanup_user("ghost")
        assert not result.found

    @pytest.mark.parametrize(
        "body",
        [
            b"{",
            b"[]",
            b'{"if_violating": "no"}',
            b'{"if_violating": 0}',
            b'{"if_violating": false, "everyone": true}',
        ],
    )
    async def test_bad_body_is_a_400_and_changes_nothing(
        self, registry, served, fill, body
    ) -> None:
        """Garbage, wrong types, unknown keys: 400 naming the expected body; session kept."""
        agents = await fill("calm", 2)
        status, answer = await raw(
            served.path,
            "POST",
            "/v1/users/calm/cleanup",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400
        assert "if_violating" in answer["error"]
        assert registry.get_session("calm").agent_count == 2
        assert {a.closes for a in agents} == {0}

    async def test_huge_body_is_refused(self, registry, served, fill) -> None:
        """A body far beyond the tiny cleanup request is a 413, nothing cleaned."""
        await fill("greedy", 60)
        status, answer = await raw(
            served.path, "POST", "/v1/users/greedy/cleanup", data=b"{" * 100_000
        )
        assert status == 413
        assert "too large" in answer["error"].lower()
        assert registry.get_session("greedy").agent_count == 60

    async def test_compressed_body_is_refused_unread(self, registry, served, fill) -> None:
        """A gzip body asking for an unconditional cleanup: 415, never inflated, nothing done."""
        agents = await fill("calm", 2)
        status, answer = await raw(
            served.path,
            "POST",
            "/v1/users/calm/cleanup",
            data=gzip.compress(b'{"if_violating": false}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert status == 415
        assert "send the body uncompressed" in answer["error"]
        assert registry.get_session("calm").agent_count == 2
        assert {a.closes for a in agents} == {0}

    async def test_conditional_cleanup_racing_registrations_loses_no_agent(
        self, registry, worker
    ) -> None:
        """Cleanups over the socket while the same user registers agents: none lost or
        closed twice, and a cleanup only ever detaches a session that was over the limit."""
        made: list[RecordingAgent] = []

        async def register(n: int) -> None:
            agent = RecordingAgent(f"hot/{n}")
            made.append(agent)
            await registry.register_user_agent("hot", f"agent-{n}", agent)
            await asyncio.sleep(0)

        async def churn() -> None:
            for n in range(300):
                await register(n)

        async def clean() -> list:
            return [await worker.cleanup_user("hot") for _ in range(15)]

        _, results = await asyncio.gather(churn(), clean())
        assert_kept_or_closed_once(registry, made)
        cleaned = [r.agents_cleaned for r in results if r.agents_cleaned]
        assert cleaned, "no cleanup ever found the session over the limit"
        assert all(n > registry.thresholds.agents_per_user for n in cleaned)


class TestVersions:
    @pytest.mark.parametrize("path", ["/v2/snapshot", "/v0/users/u1", "/snapshot", "/"])
    async def test_unknown_version_is_a_404_listing_the_versions_spoken(self, served, path) -> None:
        """Any path outside /v1/ answers which versions this worker speaks."""
        status, body = await raw(served.path, "GET", path)
        assert status == 404
        assert body["versions"] == ["v1"]
        assert "unknown API version" in body["error"]

    async def test_unknown_endpoint_in_v1_is_a_json_404(self, served) -> None:
        """Inside v1, an unknown path is a plain 404 with a JSON error."""
        status, body = await raw(served.path, "GET", "/v1/everything")
        assert status == 404
        assert body["error"] == "no such endpoint: GET /v1/everything"

    async def test_wrong_method_is_a_json_405(self, served) -> None:
        """GET on the cleanup endpoint: 405, nothing cleaned."""
        status, body = await raw(served.path, "GET", "/v1/users/u1/cleanup")
        assert status == 405
        assert "error" in body

    async def test_sidecar_names_a_version_it_does_not_speak(self, served, monkeypatch) -> None:
        """A worker speaking only another version: the error says which ones, in one line."""
        from agent_registry_exporter.sources import worker_client

        monkeypatch.setattr(worker_client, "API_VERSION", "v9")
        client = WorkerSource("w1", served.path)
        with pytest.raises(WorkerError, match=r"^worker w1: speaks API versions v1; this "):
            await client.snapshot()
        await client.close()


def test_socket_path_names_the_worker() -> None:
    """One place decides the file name the sidecar discovers."""
    assert socket_path("/run/agent-registry", "7") == Path("/run/agent-registry/worker-7.sock")


def rows_of(registry: AgentRegistry) -> list[tuple[str, int, float]]:
    return [(s.user_id, s.agent_count, s.created_timestamp) for s in registry.sessions()]


def rows_in(snapshot) -> list[tuple[str, int, float]]:  # type: ignore[no-untyped-def]
    return [(s.user_id, s.agent_count, s.created_timestamp) for s in snapshot.sessions]


async def snapshot_answer(path: Path, query: str = "") -> Answer:
    """GET /v1/snapshot with `query`, decoded (a full snapshot or a delta)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
        session.get(URL(f"http://worker/v1/snapshot{query}", encoded=True)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return decode_answer(await resp.read())


def since(position: Position | None) -> str:
    assert position is not None
    return f"?since={position.generation}&epoch={position.epoch}"


class SnapshotWatchingRegistry(AgentRegistry):
    """Says when a snapshot was taken, to race a cleanup against its encoding."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_taken = asyncio.Event()

    def snapshot(self, **kwargs: float) -> RegistrySnapshot:
        self.snapshot_taken.set()
        return super().snapshot(**kwargs)


class TestDeltas:
    async def test_a_sidecar_at_a_known_generation_gets_only_what_changed(
        self, registry, served
    ) -> None:
        """Two users changed, one removed, one added: those rows, that id, exact totals."""
        for n in range(50):
            await add_agents(registry, f"u{n}", 2)
        full = await snapshot_answer(served.path)
        assert full.delta is None
        assert full.position == Position(registry.epoch, registry.generation)
        await registry.register_user_agent("u3", "more", RecordingAgent())
        await registry.unregister_user_agent("u7", "agent-0")
        await registry.lifecycle_manager.trigger_cleanup("u9", if_violating=False)
        await add_agents(registry, "new", 1)
        answer = await snapshot_answer(served.path, since(full.position))
        delta = answer.delta
        assert delta is not None
        assert answer.position == Position(registry.epoch, registry.generation)
        assert delta.since == full.position.generation
        assert sorted(rows_in(answer.snapshot)) == sorted(
            r for r in rows_of(registry) if r[0] in {"u3", "u7", "new"}
        )
        assert list(delta.removed) == ["u9"]
        assert (delta.users, delta.agents) == registry.totals == (50, 99)

    async def test_nothing_changed_is_an_empty_delta(self, registry, served) -> None:
        """A scrape of an idle worker costs it no rows at all."""
        await add_agents(registry, "u", 3)
        full = await snapshot_answer(served.path)
        answer = await snapshot_answer(served.path, since(full.position))
        assert answer.delta is not None
        assert (len(answer.delta.rows), len(answer.delta.removed)) == (0, 0)

    @pytest.mark.parametrize(
        "query",
        ["?since=999999", "?since=0&epoch=another-process", "?since=0"],
        ids=["future-generation", "another-epoch", "no-epoch"],
    )
    async def test_a_generation_the_worker_cannot_vouch_for_gets_a_full_snapshot(
        self, registry, served, query
    ) -> None:
        """A future generation, another process's epoch, or no epoch at all: full, said so."""
        await add_agents(registry, "u", 3)
        if "epoch" not in query and "999999" in query:
            query += f"&epoch={registry.epoch}"
        answer = await snapshot_answer(served.path, query)
        assert answer.delta is None
        assert rows_in(answer.snapshot) == rows_of(registry)
        assert answer.position == Position(registry.epoch, registry.generation)

    @pytest.mark.parametrize(
        "query",
        [
            "since=abc",
            "since=-1",
            "since=1.5",
            "since=",
            "since=%2B3",
            "since=%203",
            "since=%D9%A1",
            "since=1e3",
            "since=99999999999999999999",
            "since=9223372036854775808",
            "since=1&since=2",
            "since=1&epoch=a&epoch=b",
        ],
    )
    async def test_a_bad_since_is_a_400_naming_the_parameter_and_changes_nothing(
        self, registry, served, query
    ) -> None:
        """Garbage, negative, fractional, non-ASCII digits, past int64, or given twice."""
        await add_agents(registry, "u", 3)
        full = await snapshot_answer(served.path)
        status, body = await raw(served.path, "GET", f"/v1/snapshot?{query}")
        assert status == 400
        name = query.split("=")[-2].split("&")[-1]
        assert body["parameter"] == name
        assert name in body["error"]
        assert registry.generation == full.position.generation  # type: ignore[union-attr]
        answer = await snapshot_answer(served.path, since(full.position))
        assert answer.delta is not None  # the sidecar's generation still holds

    async def test_a_restarted_worker_with_the_same_name_answers_full(
        self, registry, socket_dir
    ) -> None:
        """Worker w0 restarts (a new registry, generations from 0 again): the sidecar's
        generation means nothing there, so it gets the new worker's whole registry."""
        for n in range(5):
            await add_agents(registry, f"old{n}", 1)
        first = await serve_registry(registry, socket_dir, worker="w0")
        client = WorkerSource("w0", first.path)
        try:
            assert len((await client.snapshot()).sessions) == 5
            await first.stop()
            restarted = AgentRegistry()
            for n in range(10):  # more changes than the old one had: the generation is known
                await add_agents(restarted, f"new{n}", 1)
            second = await serve_registry(restarted, socket_dir, worker="w0")
            try:
                snapshot = await client.snapshot()
                assert rows_in(snapshot) == rows_of(restarted)
                assert client.answers == {"full": 2}
                await restarted.unregister_user_agent("new4", "agent-0")
                assert rows_in(await client.snapshot()) == rows_of(restarted)
                assert client.answers == {"full": 2, "delta": 1}
            finally:
                await second.stop()
        finally:
            await client.close()


class TestSidecarDeltas:
    async def test_a_full_answer_lets_go_of_the_held_columns_before_it_is_decoded(
        self, registry, socket_dir, monkeypatch
    ) -> None:
        """A restarted worker answers full: the sidecar never holds that worker's columns
        twice (its memory bound counts one set per worker)."""
        await add_agents(registry, "old", 2)
        handle = await serve_registry(registry, socket_dir, worker="w0")
        client = WorkerSource("w0", handle.path)
        try:
            await client.snapshot()
            assert client._held is not None
            old_counts = weakref.ref(client._held.columns.agent_counts)  # type: ignore[arg-type]
            await handle.stop()
            handle = await serve_registry(AgentRegistry(), socket_dir, worker="w0")
            decoded_while_held = []

            def watching(data: bytearray) -> Answer:
                decoded_while_held.append(old_counts() is not None)
                return decode_answer(data)

            monkeypatch.setattr(worker_client, "decode_answer", watching)
            await client.snapshot()
            assert decoded_while_held == [False]
        finally:
            await client.close()
            await handle.stop()

    async def test_the_sidecar_asks_for_deltas_and_renders_exactly_the_registry(
        self, registry, worker
    ) -> None:
        """After the first scrape only deltas; each snapshot is the registry as it is,
        in its order, re-created sessions moved to the end."""
        for n in range(30):
            await add_agents(registry, f"u{n}", 1 + n % 4, age_hours=n)
        assert rows_in(await worker.snapshot()) == rows_of(registry)
        for step in range(6):
            await registry.register_user_agent(f"u{step}", "again", RecordingAgent())
            await registry.lifecycle_manager.trigger_cleanup(f"u{20 + step}", if_violating=False)
            await add_agents(registry, f"u{20 + step}", 1)  # re-created: now last
            await add_agents(registry, f"fresh{step}", 2)
            assert rows_in(await worker.snapshot()) == rows_of(registry)
        assert worker.answers == {"full": 1, "delta": 6}

    async def test_a_cleanup_between_two_scrapes_leaves_no_stale_row(
        self, registry, worker, fill
    ) -> None:
        """The cleaned user disappears from the very next snapshot."""
        await add_agents(registry, "calm", 1)
        await fill("leaky", 60)
        first = await worker.snapshot()
        assert "leaky" in {s.user_id for s in first.sessions}
        result = await registry.lifecycle_manager.trigger_cleanup("leaky", if_violating=True)
        assert result.agents_cleaned == 60
        second = await worker.snapshot()
        assert rows_in(second) == rows_of(registry) == [rows_of(registry)[0]]
        assert "leaky" in {s.user_id for s in first.sessions}  # the earlier one untouched

    async def test_a_cleanup_racing_a_full_snapshot_is_gone_at_the_next(self, socket_dir) -> None:
        """12,000 users: the full snapshot is encoded in steps, and a cleanup detaches a
        user between them. That snapshot still lists the user (it was taken before); the
        next one, a delta, has no row of it."""
        registry = SnapshotWatchingRegistry()
        for n in range(12_000):
            await registry.register_user_agent(f"u{n}", "a", RecordingAgent())
        for n in range(60):
            await registry.register_user_agent("u11000", f"more{n}", RecordingAgent())
        handle = await serve_registry(registry, socket_dir, worker="w1")
        client = WorkerSource("w1", handle.path, timeout=30)

        async def cleanup_mid_encoding() -> None:
            await registry.snapshot_taken.wait()  # wakes at the encoder's first step
            await registry.lifecycle_manager.trigger_cleanup("u11000", if_violating=True)

        try:
            first, _ = await asyncio.gather(client.snapshot(), cleanup_mid_encoding())
            assert registry.get_session("u11000") is None
            assert "u11000" in {s.user_id for s in first.sessions}
            assert rows_in(await client.snapshot()) == rows_of(registry)
            assert client.answers == {"full": 1, "delta": 1}
        finally:
            await client.close()
            await handle.stop()

    async def test_concurrent_scrapes_each_get_the_registry_exactly(self, registry, worker) -> None:
        """Two scrapes at once (two Prometheus replicas) while agents come and go."""
        for n in range(40):
            await add_agents(registry, f"u{n}", 2)
        await worker.snapshot()

        async def churn() -> None:
            for n in range(40):
                await registry.unregister_user_agent(f"u{n}", "agent-1")
                await asyncio.sleep(0)

        first, second, _ = await asyncio.gather(worker.snapshot(), worker.snapshot(), churn())
        assert rows_in(await worker.snapshot()) == rows_of(registry)
        for snapshot in (first, second):
            assert len(snapshot.sessions) == 40
            assert sum(s.agent_count for s in snapshot.sessions) in range(40, 81)


RELEASED_ROWS = [
    ("u1", 3, 1_795_000_000.0),
    ("héllo 🦜", 51, 1_795_000_100.5),
    ("nul\x00byte", 1, 1_794_900_000.25),
]


class TestMixedVersions:
    async def test_a_released_sidecar_reads_a_new_workers_answer(self, registry, served) -> None:
        """An old sidecar asks without `since`: the full snapshot, in the format it knows."""
        for n, user in enumerate(HOSTILE_IDS):
            await add_agents(registry, user, n + 1)
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(served.path))
            ) as session,
            session.get("http://worker/v1/snapshot") as resp,
        ):
            worker_name, rows = released_decode(await resp.read())
        assert worker_name == "w1"
        assert rows == rows_of(registry)

    async def test_a_new_sidecar_takes_a_released_workers_answer_as_full(self, socket_dir) -> None:
        """A worker rolled back to a release without deltas ignores `since` and answers a
        full snapshot without the delta marker: taken whole, never applied as a delta, and
        the next request asks for none."""
        released = Path(__file__).parent / "data" / "snapshots" / "released-worker-full.bin"
        new = await encode_snapshot(
            RegistrySnapshot(
                taken_at=1.0, thresholds=Thresholds(), sessions=[SessionRow("x", 1, 1.0)]
            ),
            WorkerIdentity("w0", 1, 1.0),
            Position("epoch-of-the-new-release", 3),
        )
        answers, queries = [new, released.read_bytes(), released.read_bytes()], []

        async def handler(request: web.Request) -> web.Response:
            queries.append(request.query_string)
            return web.Response(body=answers.pop(0), content_type=SNAPSHOT_CONTENT_TYPE)

        async with FakeWorker(socket_dir / "worker-w0.sock", handler) as fake:
            client = WorkerSource("w0", fake.path)
            try:
                assert rows_in(await client.snapshot()) == [("x", 1, 1.0)]
                for _ in range(2):
                    assert rows_in(await client.snapshot()) == RELEASED_ROWS
            finally:
                await client.close()
        assert queries == ["", "since=3&epoch=epoch-of-the-new-release", ""]
        assert client.answers == {"full": 3}

    async def test_a_delta_that_does_not_fit_is_replaced_by_a_full_snapshot(
        self, socket_dir
    ) -> None:
        """Totals that disagree with the columns (a worker's bug): the sidecar asks again
        for everything in the same scrape and renders that, never the misfit."""
        identity, position = WorkerIdentity("w0", 1, 1.0), Position("e", 3)
        rows = [SessionRow("a", 1, 1.0), SessionRow("b", 2, 1.0)]
        full = await encode_snapshot(
            RegistrySnapshot(taken_at=1.0, thresholds=Thresholds(), sessions=rows),
            identity,
            position,
        )
        bogus = encode_delta(
            RegistrySnapshot(taken_at=2.0, thresholds=Thresholds(), sessions=()),
            identity,
            Position("e", 4),
            Delta(3, SessionColumns([], [], []), 0, [], users=5, agents=9),
        )
        answers, queries = [full, bogus, full], []

        async def handler(request: web.Request) -> web.Response:
            queries.append(request.query_string)
            return web.Response(body=answers.pop(0), content_type=SNAPSHOT_CONTENT_TYPE)

        async with FakeWorker(socket_dir / "worker-w0.sock", handler) as fake:
            client = WorkerSource("w0", fake.path)
            try:
                await client.snapshot()
                assert list(rows_in(await client.snapshot())) == rows
            finally:
                await client.close()
        assert queries == ["", "since=3&epoch=e", ""]
        assert client.answers == {"full": 2, "mismatch": 1}
