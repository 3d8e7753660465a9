"""A worker answers `/v1/snapshot?since=` reading its changed users in steps, its loop
running between them, and the answer is still one moment of its registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

import pytest

from agent_registry_exporter import AgentRegistry, serve_registry
from agent_registry_exporter.registry import Changes, SessionColumns, SessionsAt
from agent_registry_exporter.registry import registry as registry_module
from agent_registry_exporter.sources import socket_api
from agent_registry_exporter.sources.snapshot_codec import Answer
from agent_registry_exporter.sources.snapshot_delta import apply_delta

from .conftest import RecordingAgent
from .test_socket_api import rows_of, since, snapshot_answer

Rows = list[tuple[str, int, float]]


class ReadWatchingRegistry(AgentRegistry):
    """Says when an answer starts reading the change log, to race changes against it."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()

    def changes_since(
        self, generation: int, epoch: str | None = None, *, most: int | None = None
    ) -> Changes | None:
        self.reading.set()
        return super().changes_since(generation, epoch, most=most)


async def registry_of(users: int) -> ReadWatchingRegistry:
    registry = ReadWatchingRegistry()
    for n in range(users):
        await registry.register_user_agent(f"u{n}", "a0", RecordingAgent())
    return registry


async def touch_all_but_the_last(registry: AgentRegistry, users: int) -> None:
    """Every user but the last changed (in place): more than one step of rows to read."""
    for n in range(users - 1):
        await registry.register_user_agent(f"u{n}", "a1", RecordingAgent())


def columns(answer: Answer) -> SessionColumns:
    assert isinstance(answer.snapshot.sessions, SessionColumns)
    return answer.snapshot.sessions


async def delta_with(
    registry: ReadWatchingRegistry,
    path: Path,
    changes: Callable[[], Awaitable[None]],
) -> tuple[Answer, Answer]:
    """The full answer, then the delta since it asked while `changes` runs once the delta's
    reading has begun."""
    full = await snapshot_answer(path)
    await touch_all_but_the_last(registry, len(registry))
    registry.reading.clear()

    async def once_reading() -> None:
        await registry.reading.wait()
        await changes()

    answer, _ = await asyncio.gather(snapshot_answer(path, since(full.position)), once_reading())
    return full, answer


class TestReadInSteps:
    async def test_a_change_made_between_the_steps_is_in_the_answer(self, socket_dir) -> None:
        """Three steps of changed users: a registration made once the reading began lands
        between two steps, and the answer (the registry at its end) has it."""
        users = 3 * registry_module.ROWS_STEP
        registry = await registry_of(users)
        handle = await serve_registry(registry, socket_dir, worker="w1")

        async def newcomer() -> None:
            await registry.register_user_agent("newcomer", "a0", RecordingAgent())

        try:
            full, answer = await delta_with(registry, handle.path, newcomer)
        finally:
            await handle.stop()
        assert answer.delta is not None
        assert answer.position is not None
        assert answer.position.generation == registry.generation  # read after the newcomer
        assert list(apply_delta(columns(full), answer.delta)) == rows_of(registry)
        assert answer.snapshot.resident_memory_bytes is not None

    async def test_a_delta_never_copies_the_session_list(self, socket_dir, monkeypatch) -> None:
        """Only the end of the sessions (the ones created since) is read for the tail: the
        registry's whole list is never copied for a delta."""

        def refused(self: SessionsAt) -> tuple[object, ...]:
            raise AssertionError("a delta read every session")

        registry = await registry_of(20)
        handle = await serve_registry(registry, socket_dir, worker="w1")
        try:
            full = await snapshot_answer(handle.path)
            await registry.register_user_agent("u4", "a1", RecordingAgent())
            await registry.detach_session("u7")
            await registry.register_user_agent("u7", "a0", RecordingAgent())  # at the end
            await registry.register_user_agent("newcomer", "a0", RecordingAgent())
            monkeypatch.setattr(SessionsAt, "whole", refused)
            answer = await snapshot_answer(handle.path, since(full.position))
        finally:
            await handle.stop()
        assert answer.delta is not None
        assert answer.delta.tail == 2
        assert list(apply_delta(columns(full), answer.delta)) == rows_of(registry)


class TestOneMoment:
    @pytest.mark.parametrize("rows_step", [2, 7])
    async def test_changes_racing_the_steps_give_the_registry_at_the_answers_generation(
        self, socket_dir, monkeypatch, rows_step
    ) -> None:
        """Registrations, a last agent leaving, a cleanup, a re-created session and a
        newcomer, one per loop turn while the steps are read: the sidecar's columns with
        the delta applied are a full snapshot of the registry at the answer's generation."""
        monkeypatch.setattr(registry_module, "ROWS_STEP", rows_step)
        registry = await registry_of(40)
        handle = await serve_registry(registry, socket_dir, worker="w1")
        states: dict[int, Rows] = {}
        manager = registry.lifecycle_manager
        racing = [
            lambda: registry.register_user_agent("u3", "a2", RecordingAgent()),
            lambda: registry.register_user_agent("newcomer", "a0", RecordingAgent()),
            lambda: registry.unregister_user_agent("u5", "a0"),
            lambda: registry.unregister_user_agent("u5", "a1"),  # its last: the session goes
            lambda: manager.trigger_cleanup("u9", if_violating=False),
            lambda: manager.trigger_cleanup("u12", if_violating=False),
            lambda: registry.register_user_agent("u12", "again", RecordingAgent()),  # at the end
            lambda: registry.register_user_agent("u39", "a2", RecordingAgent()),
        ]

        async def race() -> None:
            states[registry.generation] = rows_of(registry)
            for change in racing:
                await change()
                states[registry.generation] = rows_of(registry)
                await asyncio.sleep(0)

        try:
            full, answer = await delta_with(registry, handle.path, race)
            assert answer.delta is not None
            assert answer.position is not None
            before = min(states)
            assert answer.position.generation > before  # some changes landed mid-read
            held = apply_delta(columns(full), answer.delta)
            assert list(held) == states[answer.position.generation]
            # And the next delta brings the sidecar to the registry as it is now.
            later = await snapshot_answer(handle.path, since(answer.position))
            assert later.delta is not None
            assert list(apply_delta(held, later.delta)) == rows_of(registry)
        finally:
            await handle.stop()


class TestTooManyChanges:
    async def test_more_changes_than_a_delta_is_worth_get_a_full_snapshot(
        self, socket_dir, monkeypatch
    ) -> None:
        """Past the bound the answer is full (encoded in steps), said so, and exact."""
        monkeypatch.setattr(socket_api, "_MAX_DELTA", 10)
        registry = await registry_of(30)
        handle = await serve_registry(registry, socket_dir, worker="w1")
        try:
            full = await snapshot_answer(handle.path)
            for n in range(11):
                await registry.register_user_agent(f"u{n}", "a1", RecordingAgent())
            answer = await snapshot_answer(handle.path, since(full.position))
            few = await snapshot_answer(handle.path, since(answer.position))
        finally:
            await handle.stop()
        assert answer.delta is None
        assert list(columns(answer)) == rows_of(registry)
        assert few.delta is not None

    async def test_changes_past_the_bound_during_the_steps_get_a_full_snapshot(
        self, socket_dir, monkeypatch
    ) -> None:
        """Few enough changes when asked, too many once the steps were read: the answer is
        a full snapshot of that moment, never an oversized delta."""
        monkeypatch.setattr(socket_api, "_MAX_DELTA", 40)
        monkeypatch.setattr(registry_module, "ROWS_STEP", 2)
        registry = await registry_of(30)
        handle = await serve_registry(registry, socket_dir, worker="w1")
        states: dict[int, Rows] = {}

        async def many() -> None:
            for n in range(30, 50):
                await registry.register_user_agent(f"u{n}", "a2", RecordingAgent())
            states[registry.generation] = rows_of(registry)

        try:
            _, answer = await delta_with(registry, handle.path, many)
        finally:
            await handle.stop()
        assert answer.delta is None
        assert answer.position is not None
        assert list(columns(answer)) == states[answer.position.generation]

    async def test_a_delta_past_its_worth_reads_no_more_rows_than_that(
        self, socket_dir, monkeypatch
    ) -> None:
        """A backend registering newcomers all the while (an uncontended lock never yields:
        a burst is one loop turn): the steps, the rounds and the last step together read at
        most the bound's rows; once past it nothing more is read, and the answer is full.
        Before, each round read what the one before let through, and the last step (no
        await) what the last round did: 13,200 rows in one step at 30,000 users in review."""
        monkeypatch.setattr(socket_api, "_MAX_DELTA", 40)
        monkeypatch.setattr(registry_module, "ROWS_STEP", 2)
        registry = await registry_of(30)
        handle = await serve_registry(registry, socket_dir, worker="w1")
        states: dict[int, Rows] = {}
        answered = asyncio.Event()

        async def churn() -> None:
            await registry.reading.wait()  # the answer has begun: few enough changes then
            n = 30
            while not answered.is_set():
                for _ in range(10):  # 10 newcomers a loop turn
                    await registry.register_user_agent(f"u{n}", "a0", RecordingAgent())
                    n += 1
                states[registry.generation] = rows_of(registry)
                await asyncio.sleep(0)

        try:
            full = await snapshot_answer(handle.path)
            await touch_all_but_the_last(registry, 30)  # 29 changed: 15 steps of 2
            states[registry.generation] = rows_of(registry)
            registry.reading.clear()
            churning = asyncio.ensure_future(churn())
            try:
                with mock.patch.object(
                    AgentRegistry, "_row", autospec=True, side_effect=AgentRegistry._row
                ) as rows_read:
                    answer = await snapshot_answer(handle.path, since(full.position))
            finally:
                answered.set()
                await churning
        finally:
            await handle.stop()
        assert answer.delta is None
        assert answer.position is not None
        assert list(columns(answer)) == states[answer.position.generation]
        assert 0 < rows_read.call_count <= socket_api._MAX_DELTA
