"""A render's pauses hand the GIL to the loop that started it whenever that loop is late:
giving the GIL up for a moment (`time.sleep(0)`) let the render take it straight back, and
the loop waited a whole switch interval more (the stall of issue 21)."""

from __future__ import annotations

import asyncio
import sys
import threading
from time import perf_counter

import pytest

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.exporting import ISAL, ZLIB, Renderer, parts, pauses

from .conftest import loopback_exporter


@pytest.fixture
def every_pause(monkeypatch) -> None:
    """Every chance to pause is taken, and a hand-over waits however loaded the machine is."""
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(pauses, "HAND_OVER_SECONDS", 60.0)


def late_beat() -> pauses.Heartbeat:
    """A heartbeat on this loop that is not ticking and last ticked a minute ago."""
    beat = pauses.Heartbeat(asyncio.get_running_loop())
    beat.at -= 60.0
    return beat


async def test_a_pause_waits_until_a_late_loop_has_run(every_pause) -> None:
    beat = late_beat()
    resumed = threading.Event()

    def render() -> None:
        with pauses.watched_by(beat):
            pauses.pause()
        resumed.set()

    thread = asyncio.ensure_future(asyncio.to_thread(render))
    await asyncio.sleep(0.05)
    assert not resumed.is_set()  # the loop has not ticked: the pause still waits for it
    beat.tick()
    try:
        await thread
        assert resumed.is_set()
    finally:
        beat.stop()


async def test_a_pause_waiting_for_the_loop_leaves_it_the_gil(every_pause, monkeypatch) -> None:
    """The wait sleeps, it does not spin holding the GIL: with a switch interval of an hour
    (the GIL never taken by force), the loop still runs and ticks while a pause waits for
    it, so the pause never waits in vain."""
    beat = late_beat()
    loop, waiting = asyncio.get_running_loop(), asyncio.Event()
    hand_over = pauses.Heartbeat.hand_over

    def spy(self: pauses.Heartbeat) -> None:
        loop.call_soon_threadsafe(waiting.set)
        hand_over(self)

    monkeypatch.setattr(pauses.Heartbeat, "hand_over", spy)

    def render() -> None:
        with pauses.watched_by(beat):
            pauses.pause()

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(3600.0)
    try:
        thread = asyncio.ensure_future(asyncio.to_thread(render))
        await waiting.wait()
        beat.tick()  # the loop runs while the pause waits: a spinning wait would not let it
        await thread
    finally:
        sys.setswitchinterval(switch_interval)
        beat.stop()
    assert beat.missed == -1.0  # the pause saw the loop tick: it never gave up waiting


async def test_a_pause_does_not_wait_for_a_loop_on_time(every_pause, monkeypatch) -> None:
    beat = pauses.Heartbeat(asyncio.get_running_loop())
    beat.at = perf_counter() + 3600.0  # ticked "just now", whatever the machine's speed
    waited: list[float] = []
    monkeypatch.setattr(pauses.Heartbeat, "hand_over", lambda self: waited.append(self.at))

    def render() -> int:
        with pauses.watched_by(beat):
            for _ in range(100):
                pauses.pause()
        return pauses.pauses_taken()

    assert await asyncio.to_thread(render) == 100  # each pause reached, none waited
    assert waited == []


async def test_a_loop_busy_elsewhere_is_waited_for_once_per_tick(monkeypatch) -> None:
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(pauses, "HAND_OVER_SECONDS", 0.01)
    beat = late_beat()  # and it never ticks: the loop is busy (here: awaiting the thread)
    started: list[float] = []
    hand_over = pauses.Heartbeat.hand_over

    def spy(self: pauses.Heartbeat) -> None:
        started.append(perf_counter())
        hand_over(self)

    monkeypatch.setattr(pauses.Heartbeat, "hand_over", spy)

    def render() -> None:
        with pauses.watched_by(beat):
            for _ in range(50):
                pauses.pause()

    await asyncio.to_thread(render)
    assert len(started) == 1  # waited in vain once, then went on without waiting again
    assert beat.missed == beat.at
    beat.at -= 1.0  # the loop ticked once since (long ago): its next tick is waited for
    await asyncio.to_thread(render)
    assert len(started) == 2


async def test_in_thread_watches_the_call_and_stops_ticking_after_it(every_pause) -> None:
    seen: list[pauses.Heartbeat | None] = []

    def render(fail: bool) -> str:
        beat = pauses._watched.get()
        seen.append(beat)
        assert beat is not None
        assert beat.ticking
        if fail:
            raise RuntimeError("render failed")
        return "body"

    assert await pauses.in_thread(render, False) == "body"
    with pytest.raises(RuntimeError, match="render failed"):
        await pauses.in_thread(render, True)
    assert [beat is not None and not beat.ticking for beat in seen] == [True, True]
    assert pauses._watched.get() is None  # nothing left set in the caller's context


async def test_a_cancelled_render_stops_its_heartbeat_and_waits_for_it_once(monkeypatch) -> None:
    """The scraper hung up: the await is cancelled, the thread renders on. No heartbeat is
    left ticking on the loop, and the thread's pauses wait in vain for it once, not at each."""
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(pauses, "HAND_OVER_SECONDS", 0.01)
    waited: list[float] = []
    hand_over = pauses.Heartbeat.hand_over

    def spy(self: pauses.Heartbeat) -> None:
        waited.append(self.at)
        hand_over(self)

    monkeypatch.setattr(pauses.Heartbeat, "hand_over", spy)
    seen: list[pauses.Heartbeat] = []
    started, cancelled, done = threading.Event(), threading.Event(), threading.Event()

    def render() -> None:
        beat = pauses._watched.get()
        assert beat is not None
        seen.append(beat)
        started.set()
        cancelled.wait()
        for _ in range(50):
            pauses.pause()
        done.set()

    task = asyncio.ensure_future(pauses.in_thread(render))
    try:
        await asyncio.to_thread(started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (beat,) = seen
        ticking = beat.ticking
        beat.stop()
        beat.at -= 60.0  # and the loop has not ticked for a minute since
    finally:
        cancelled.set()  # the thread goes on (and ends) whatever the test found
    await asyncio.to_thread(done.wait)
    assert not ticking
    assert len(waited) == 1


async def test_a_metrics_render_is_watched_by_the_servers_loop(
    monkeypatch, registry: AgentRegistry
) -> None:
    watched: list[pauses.Heartbeat | None] = []
    render = Renderer.render

    def spy(self: Renderer, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        watched.append(pauses._watched.get())
        return render(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Renderer, "render", spy)
    await registry.register_user_agent("u1", "a1", object())
    server = await loopback_exporter(registry)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = await reader.read()
        writer.close()
        assert body.startswith(b"HTTP/1.1 200")
        assert b'agent_registry_user_agents{user_id="u1"} 1' in body
    finally:
        await server.stop()
    assert len(watched) == 1
    assert isinstance(watched[0], pauses.Heartbeat)
    assert not watched[0].ticking  # stopped with the render


def in_a_thread(work):  # type: ignore[no-untyped-def]
    """`work()` in a fresh thread (its own pause count and helpers, as a render's), its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join()
    return out[0]


def test_a_pause_sleeps_only_while_a_helper_may_wait(every_pause, monkeypatch) -> None:
    """No loop watching and no helper: nobody is known to want the GIL, and a pause costs
    no system call (a sleep(0) lasts ~0.08 ms); with a helper running, each pause lets it in."""
    slept: list[float] = []
    monkeypatch.setattr(pauses, "sleep", slept.append)

    def work() -> tuple[int, int, int]:
        for _ in range(10):
            pauses.pause()
        alone = len(slept)
        pauses.helper_started()
        for _ in range(10):
            pauses.pause()
        pauses.helper_stopped()
        helped = len(slept) - alone
        for _ in range(10):
            pauses.pause()
        return alone, helped, len(slept) - alone - helped

    assert in_a_thread(work) == (0, 10, 0)


@pytest.mark.parametrize("fails", [False, True], ids=["finished", "failed"])
def test_a_gzip_body_counts_its_helper_while_it_runs(fails, monkeypatch) -> None:
    """The gzip parts' helper thread is this thread's helper from its start to its stop,
    once, whether the body is finished or the render fails first."""
    seen: list[int] = []
    real_put = parts._Helper.put

    def put(self, *args):  # type: ignore[no-untyped-def]
        seen.append(pauses._last.helpers)
        real_put(self, *args)

    monkeypatch.setattr(parts._Helper, "put", put)

    def work() -> int:
        body = parts.GzipParts(ISAL if ISAL is not None else ZLIB, batch=1024)
        try:
            for _ in range(4):
                body.text(b"x" * 2048)
            if fails:
                raise RuntimeError("render failed")
            body.finish()
        except RuntimeError:
            pass
        finally:
            body.close()
        body.close()  # closed twice: still counted off once
        return pauses._last.helpers

    assert in_a_thread(work) == 0
    assert set(seen) == {1}  # the helper started, and counted once while it ran
