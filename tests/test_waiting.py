"""The harness's one polling helper, and the suite's habits it stands for."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from agent_registry_exporter.testing import WaitTimeout, wait_until, wait_until_async

TESTS = Path(__file__).parent


class TestWaitUntil:
    def test_returns_the_first_truthy_value(self) -> None:
        """The value the predicate found is handed back (no second call to get it)."""
        answers = iter([None, [], {"w1": 3}])
        assert wait_until(lambda: next(answers), interval=0) == {"w1": 3}

    def test_gives_up_naming_what_was_awaited_and_the_last_value(self) -> None:
        """A timeout is a test failure (AssertionError) that says what never happened."""
        with pytest.raises(WaitTimeout, match=r"2 workers serve \(last seen: \[\]\)"):
            wait_until(lambda: [], timeout=0, message="2 workers serve")

    def test_an_error_in_the_predicate_ends_the_wait_at_once(self) -> None:
        """A process found dead is reported, not waited for until the timeout."""
        calls = []

        def died() -> bool:
            calls.append(1)
            raise RuntimeError("exited with 1")

        with pytest.raises(RuntimeError, match="exited with 1"):
            wait_until(died, timeout=3600)
        assert len(calls) == 1


class TestWaitUntilAsync:
    async def test_takes_plain_and_coroutine_predicates(self) -> None:
        """`lambda: flag` and `async def check()` alike."""
        seen = []

        async def check() -> bool:
            seen.append(1)
            return len(seen) == 3

        assert await wait_until_async(check, interval=0) is True
        assert await wait_until_async(lambda: "ready", interval=0) == "ready"

    async def test_the_loop_runs_between_calls(self) -> None:
        """What the predicate waits for may be done by another task meanwhile."""
        done = asyncio.Event()
        asyncio.get_running_loop().call_soon(done.set)
        await wait_until_async(done.is_set, interval=0)

    async def test_gives_up_with_the_same_failure(self) -> None:
        """The async variant fails as the sync one does."""
        with pytest.raises(WaitTimeout, match="not within 0s: never"):
            await wait_until_async(lambda: False, timeout=0, message="never")


class TestSuiteHabits:
    @pytest.mark.parametrize(
        "pattern",
        [r"time\.(monotonic|perf_counter|process_time)\(", r"\bdeadline\s*="],
        ids=["wall-clock", "deadline-loop"],
    )
    def test_no_test_reads_the_clock_or_writes_its_own_deadline_loop(self, pattern) -> None:
        """Tests assert behaviour, never elapsed time; they wait with `testing.wait_until`."""
        offenders = [
            f"{path.relative_to(TESTS)}:{n}"
            for path in sorted(TESTS.rglob("*.py"))
            if path.name != "test_waiting.py"
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(pattern, line) and "deadline=None" not in line  # hypothesis' option
        ]
        assert offenders == []

    def test_a_test_not_marked_processes_cannot_start_one(self) -> None:
        """The fast lane (`make test-fast`: not e2e, not processes) really starts none."""
        with pytest.raises(AssertionError, match="mark it `processes`"):
            subprocess.run(["true"], check=True)

    @pytest.mark.processes
    def test_a_test_marked_processes_may(self) -> None:
        """The mark lifts the guard (the test then runs in `make test` only)."""
        assert subprocess.run(["true"], check=True).returncode == 0
