"""The lifecycle manager: checks sessions against the thresholds and cleans them up."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..common.loggers import logger_name
from .cleaned import CleanedAgentTracker
from .monitoring import MonitorResult, Status
from .sessions import Clock, UserAgentSession
from .thresholds import Thresholds

__all__ = ["AgentLifecycleManager", "CleanupResult", "SessionStore"]

_log = logging.getLogger(logger_name("lifecycle"))

# Tried in this order; the first one an agent has is the one awaited.
_CLOSE_METHODS = ("aclose", "close", "cleanup")
# Synchronous closes run on threads, at most this many alive per manager, across all its
# cleanups: a close that outlives the per-agent timeout is left to finish alone, but keeps
# its thread's slot until it returns, so blocked closes cannot pile up threads.
_CLOSE_THREADS = 16


@dataclass
class CleanupResult:
    """What one `trigger_cleanup` did. Agent failures are listed here, never raised."""

    user_id: str
    found: bool
    agents_cleaned: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0
    # Set by a conditional cleanup that found the session within every threshold: untouched.
    not_violating: bool = False
    # The issue strings seen at the check, under the same lock as the detach.
    issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class SessionStore(Protocol):
    """What the lifecycle manager reads and changes of a registry (`AgentRegistry` is one):
    the manager owns no sessions, and the registry builds its manager without a cycle."""

    @property
    def thresholds(self) -> Thresholds: ...
    @property
    def clock(self) -> Clock: ...
    def get_session(self, user_id: str) -> UserAgentSession | None: ...
    def sessions(self) -> Sequence[UserAgentSession]: ...
    async def detach_session_if(
        self, user_id: str, condition: Callable[[UserAgentSession], bool]
    ) -> tuple[bool, UserAgentSession | None]: ...
    async def unregister_user_agent(self, user_id: str, agent_id: str) -> Any | None: ...


@dataclass(eq=False)
class _Closing:
    """One cleanup in progress: whose session, and how many of its agents are still closing."""

    user_id: str
    left: int


class AgentLifecycleManager:
    """Monitors sessions against the registry's thresholds and cleans them up.

    It owns no sessions: every read goes through the registry it was given.
    """

    def __init__(
        self, registry: SessionStore | None = None, *, agent_close_timeout: float = 5.0
    ) -> None:
        if agent_close_timeout <= 0:
            raise ValueError("agent_close_timeout must be greater than 0")
        self.registry = registry
        self.agent_close_timeout = agent_close_timeout
        # Weak references to what cleanups closed: a closed agent should soon be garbage.
        self.cleaned_agents = CleanedAgentTracker(
            clock=registry.clock if registry is not None else time.time
        )
        self.close_threads = _CLOSE_THREADS
        self._close_slots = asyncio.Semaphore(_CLOSE_THREADS)
        # The cleanups in progress and their agents not yet closed: what a shutdown reports.
        self._closing: set[_Closing] = set()

    async def monitor_memory_usage(self, user_id: str) -> dict[str, Any]:
        """Check one user's session; never raises (a failure is `status: 'error'`).

        The seed system's dict: `MonitorResult.as_dict()` of `monitor_user(user_id)`.
        """
        return (await self.monitor_user(user_id)).as_dict()

    async def monitor_user(self, user_id: str) -> MonitorResult:
        """Check one user's session; never raises (a failure is `Status.ERROR`)."""
        if self.registry is None:
            return MonitorResult(Status.NO_REGISTRY, user_id)
        try:
            session = self.registry.get_session(user_id)
            if session is None:
                return MonitorResult(Status.NO_SESSION, user_id)
            return self.evaluate(session)
        except Exception as exc:
            _log.exception("monitoring user %r failed", user_id)
            return MonitorResult.failed(user_id, f"{type(exc).__name__}: {exc}")

    def evaluate(self, session: UserAgentSession) -> MonitorResult:
        """The monitoring result for a session the caller already holds."""
        assert self.registry is not None
        return MonitorResult.of_session(session, self.registry.thresholds)

    async def monitor_all_users(self) -> dict[str, Any]:
        """Check every session; `global_issues` holds every user's issues and the total's."""
        if self.registry is None:
            return {"total_users": 0, "total_agents": 0, "global_issues": [], "users": {}}
        users: dict[str, Any] = {}
        global_issues: list[str] = []
        total_agents = 0
        # No await inside the loop: the report is one consistent moment of the registry.
        for session in self.registry.sessions():
            result = self.evaluate(session)
            users[session.user_id] = result.as_dict()
            global_issues.extend(result.issues)
            total_agents += result.metrics["agent_count"]
        global_issues.extend(self.registry.thresholds.total_issues(total_agents))
        return {
            "total_users": len(users),
            "total_agents": total_agents,
            "global_issues": global_issues,
            "users": users,
        }

    async def trigger_cleanup(self, user_id: str, *, if_violating: bool = False) -> CleanupResult:
        """Detach the user's session, then close its agents; an unknown user is a no-op.

        With `if_violating=True` the session is detached only if it exceeds a threshold,
        checked under the registry lock in the same step as the detach: a session that
        became healthy since an alert was raised is left untouched (`not_violating=True`).
        Never raises for anything an agent does: failures are listed in `errors`.
        """
        started = time.perf_counter()
        if self.registry is None:
            return CleanupResult(user_id=user_id, found=False)
        thresholds = self.registry.thresholds
        seen: list[str] = []

        def should_detach(session: UserAgentSession) -> bool:
            seen[:] = thresholds.user_issues(session.agent_count, session.uptime_seconds)
            return bool(seen) or not if_violating

        found, session = await self.registry.detach_session_if(user_id, should_detach)
        if session is None:
            if found:
                _log.info("session of user %r left alone: within every threshold", user_id)
            return CleanupResult(
                user_id=user_id,
                found=found,
                not_violating=found,
                duration_seconds=time.perf_counter() - started,
            )
        # Outside the registry lock: a slow agent must not stall registration for everyone.
        agents = session.drain()
        closing = _Closing(user_id, len(agents))
        self._closing.add(closing)
        try:
            errors = await self._close_all(agents, closing)
        finally:
            self._closing.discard(closing)
        self.cleaned_agents.track(agent for _, agent in agents)
        cleaned = len(agents) - len(errors)
        _log.info("cleaned session of user %r: %d agents, %d errors", user_id, cleaned, len(errors))
        return CleanupResult(
            user_id=user_id,
            found=True,
            agents_cleaned=cleaned,
            errors=errors,
            duration_seconds=time.perf_counter() - started,
            issues=seen,
        )

    async def cleanup_agent_resources(self, user_id: str, agent_id: str) -> bool:
        """Unregister one agent and close it; False when it was not registered or failed."""
        if self.registry is None:
            return False
        agent = await self.registry.unregister_user_agent(user_id, agent_id)
        if agent is None:
            return False
        errors = await self._close_all([(agent_id, agent)])
        self.cleaned_agents.track([agent])
        return not errors

    def agents_left(self) -> dict[str, int]:
        """Agents not yet closed by the cleanups in progress, per user (for shutdown logs)."""
        left: dict[str, int] = {}
        for closing in self._closing:
            left[closing.user_id] = left.get(closing.user_id, 0) + closing.left
        return left

    async def _close_all(
        self, agents: Sequence[tuple[str, Any]], closing: _Closing | None = None
    ) -> dict[str, str]:
        async def close(agent: Any) -> str | None:
            try:
                return await self._close_one(agent)
            finally:
                if closing is not None:
                    closing.left -= 1

        outcomes = await asyncio.gather(*(close(agent) for _, agent in agents))
        return {
            agent_id: error for (agent_id, _), error in zip(agents, outcomes, strict=True) if error
        }

    async def _close_one(self, agent: Any) -> str | None:
        name = _CLOSE_METHODS[0]
        try:
            for name in _CLOSE_METHODS:
                method = getattr(agent, name, None)
                if callable(method):
                    break
            else:
                return None
            if inspect.iscoroutinefunction(method):
                async with asyncio.timeout(self.agent_close_timeout):
                    await method()
            else:
                # A synchronous close may block (time.sleep, a socket): never on the loop.
                # Waiting for a thread is not the agent's time, but it is bounded too: when
                # every thread stays held by closes that never return, this one is reported.
                try:
                    async with asyncio.timeout(self.agent_close_timeout):
                        await self._close_slots.acquire()
                except TimeoutError:
                    return (
                        f"{name}() not started: all {self.close_threads} close threads are"
                        " held by closes that have not returned"
                    )
                async with asyncio.timeout(self.agent_close_timeout):
                    outcome = await _in_daemon_thread(method, self._close_slots.release)
                    if inspect.isawaitable(outcome):
                        await outcome
        except TimeoutError:
            return f"{name}() timed out after {self.agent_close_timeout:g}s"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our own cancellation (shutdown), not the agent's doing
            return f"{name}() raised CancelledError"
        except Exception as exc:
            return f"{name}() raised {_describe(exc)}"
        return None


async def _in_daemon_thread(call: Callable[[], object], returned: Callable[[], None]) -> object:
    """`call()` on a daemon thread: one that never returns must not hold up process exit.

    `returned()` runs on the loop once `call()` returned, whoever still waits for it.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()

    def settle(outcome: object, error: Exception | None) -> None:
        if done.done():  # the waiter timed out or was cancelled
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(outcome)

    def run() -> None:
        outcome: object = None
        error: Exception | None = None
        try:
            outcome = call()
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit in an agent's close is not ours to raise
            error = RuntimeError(_describe(exc))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome, error)
            loop.call_soon_threadsafe(returned)

    try:
        threading.Thread(target=run, name="agent-close", daemon=True).start()
    except BaseException:
        returned()  # no thread, nothing to wait for
        raise
    return await done


def _describe(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose own `__str__` raises."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
