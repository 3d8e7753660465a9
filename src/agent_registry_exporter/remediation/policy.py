"""The policy from alert to action: match, dedupe, verify, rate-limit, act.

Testable without HTTP: `Remediator.handle(payload)` returns one `Decision` per alert.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ..common.loggers import logger_name
from ..common.token_bucket import TokenBucket
from ..registry import CleanupResult, MonitorResult, Status
from ..settings import Settings
from ..sources import LooksUpInBatches, RegistrySource, WorkerSources, peek
from .decision import Decision, Outcome
from .decision import decision_for as _decision
from .payload import Alert, WebhookPayload
from .routing import InstanceRouter

__all__ = ["Decision", "Outcome", "RemediationPolicy", "Remediator", "TokenBucket"]

_log = logging.getLogger(logger_name("remediation.policy"))

REMEDIATION_LABEL = "remediation"
REMEDIATION_CLEANUP = "cleanup"
_YIELD_EVERY = 100


# Only these mark an alert as handled: an alert found healthy is checked again next time,
# since the user may have crossed the limit again while the alert kept firing.
_HANDLED = frozenset({Outcome.CLEANED, Outcome.DRY_RUN})


def _default(setting: str) -> Any:
    """A setting's default: written once, in `Settings`."""
    return Settings.model_fields[setting].default


@dataclass(frozen=True)
class RemediationPolicy:
    """The safety settings of the receiver (see `Settings` for their meaning and defaults)."""

    dry_run: bool = _default("dry_run")
    instance: str | None = _default("instance")
    cleanup_rate_per_minute: float = _default("cleanup_rate_per_minute")
    cleanup_burst: int = _default("cleanup_burst")
    breaker_max_share: float = _default("breaker_max_share")
    breaker_min_users: int = _default("breaker_min_users")
    cleanup_concurrency: int = _default("cleanup_concurrency")
    cleanup_timeout_seconds: float = _default("cleanup_timeout_seconds")
    dedupe_cache_size: int = _default("dedupe_cache_size")

    @classmethod
    def from_settings(cls, settings: Settings) -> RemediationPolicy:
        """The receiver's safety settings out of `settings`."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


_AlertKey = tuple[str, datetime]


# A session to clean: the worker whose registry holds it (None in embedded mode), the user.
_Target = tuple[str | None, str]


@dataclass
class _Candidate:
    index: int
    alert: Alert
    user_id: str
    key: _AlertKey
    source: RegistrySource | None = None  # the registry holding the session, once routed

    @property
    def target(self) -> _Target:
        return (self.alert.labels.get("worker"), self.user_id)


@dataclass
class _Batch:
    decisions: list[Decision | None]
    candidates: list[_Candidate] = field(default_factory=list)


class Remediator:
    """Turns webhook payloads into verified, rate-limited cleanups."""

    def __init__(
        self,
        source: RegistrySource,
        policy: RemediationPolicy | None = None,
        *,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        router: InstanceRouter | None = None,
    ) -> None:
        self.source = source
        self.policy = policy or RemediationPolicy()
        self.router = router or InstanceRouter(self.policy.instance)
        self._on_decision = on_decision
        self._bucket = TokenBucket(
            self.policy.cleanup_rate_per_minute / 60.0, self.policy.cleanup_burst, clock
        )
        self._handled: OrderedDict[_AlertKey, None] = OrderedDict()
        self._in_flight: set[_AlertKey] = set()
        # Cleanups that outlived a request's deadline: referenced until they finish (an
        # unreferenced task may be garbage-collected mid-cleanup), then logged.
        self._background: set[asyncio.Task[CleanupResult]] = set()
        # Every cleanup started here and not yet finished, whoever waits for it: `drain`.
        self._cleanups: dict[asyncio.Task[CleanupResult], _Target] = {}

    async def handle(self, payload: WebhookPayload, *, forwarded: bool = False) -> list[Decision]:
        """Decide (and, unless dry-run, act) on every alert of the payload.

        `forwarded`: a peer sent the payload (hop header); nothing of it is forwarded again.
        """
        started = time.perf_counter()
        batch = self._screen(payload.alerts)
        # Claimed before routing, so an alert forwarded and delivered here again meanwhile
        # is a duplicate; the owner remembers what it handled (an HA pair's two deliveries
        # reach it through two replicas and end in one cleanup).
        claimed = [c.key for c in batch.candidates]
        try:
            forwarding = await self._route(payload, batch, forwarded)
            self._route_to_workers(batch)
            try:
                violating = await self._verify(batch)
                violating = await self._apply_breaker(batch, violating)
                await self._act(batch, violating)
            finally:
                if forwarding is not None:
                    await forwarding
        finally:
            for key in claimed:
                self._in_flight.discard(key)
        for cand in batch.candidates:
            decision = batch.decisions[cand.index]
            if decision is not None and decision.outcome in _HANDLED:
                self._remember(cand.key)
        decisions = [d for d in batch.decisions if d is not None]
        elapsed = time.perf_counter() - started
        own = self.policy.instance
        for decision in decisions:
            if own and decision.owner != own and own not in decision.detail:
                # Whatever the outcome, say whose alert it was and who answered it.
                decision.detail = "; ".join(
                    filter(None, [decision.detail, f"alert for {decision.owner}, seen by {own}"])
                )
            # A cleanup reports its own duration; any other decision took the whole handling.
            decision.duration_seconds = decision.duration_seconds or elapsed
            self._record(decision)
        return decisions

    def _screen(self, alerts: Iterable[Alert]) -> _Batch:
        """Steps that need no registry: status, label, user, duplicates."""
        batch = _Batch(decisions=[])
        for index, alert in enumerate(alerts):
            user_id = alert.labels.get("user_id") or None
            outcome: Outcome | None = None
            key = (alert.fingerprint, alert.starts_at)
            if alert.status != "firing":
                outcome = Outcome.RESOLVED
            elif alert.labels.get(REMEDIATION_LABEL) != REMEDIATION_CLEANUP:
                outcome = Outcome.NOT_REMEDIABLE
            elif user_id is None:
                outcome = Outcome.NO_USER
            elif key in self._handled or key in self._in_flight:
                outcome = Outcome.DUPLICATE
            if outcome is not None:
                batch.decisions.append(_decision(alert, outcome))
                continue
            assert user_id is not None
            self._in_flight.add(key)
            batch.decisions.append(None)
            batch.candidates.append(_Candidate(index, alert, user_id, key))
        return batch

    async def _route(
        self, payload: WebhookPayload, batch: _Batch, forwarded: bool
    ) -> asyncio.Future[None] | None:
        """Keep this replica's candidates; start forwarding the peers' (awaited by handle)."""
        alerts = [c.alert for c in batch.candidates]
        routes = await self.router.route(alerts, forwarded=forwarded)
        for n, decision in routes.decided.items():
            batch.decisions[batch.candidates[n].index] = decision
        remote = routes.remote
        candidates, batch.candidates = batch.candidates, [batch.candidates[n] for n in routes.local]
        if not remote:
            return None

        async def forward() -> None:
            for n, decision in (await self.router.forward(payload, alerts, remote)).items():
                batch.decisions[candidates[n].index] = decision

        return asyncio.ensure_future(forward())

    def _route_to_workers(self, batch: _Batch) -> None:
        """Give each local candidate the registry its `worker` label names, or decide why not."""
        kept = []
        # One lookup per worker named: in sidecar mode each one lists the socket directory.
        sources: dict[str | None, RegistrySource | str] = {}
        for cand in batch.candidates:
            worker = cand.alert.labels.get("worker")
            if worker not in sources:
                sources[worker] = self._worker_source(worker)
            source = sources[worker]
            if isinstance(source, str):
                batch.decisions[cand.index] = _decision(cand.alert, Outcome.UNKNOWN_WORKER, source)
            else:
                cand.source = source
                kept.append(cand)
        batch.candidates = kept

    def _worker_source(self, worker: str | None) -> RegistrySource | str:
        if not isinstance(self.source, WorkerSources):
            if worker is None:
                return self.source
            return f"this exporter serves one registry; the alert names worker {worker!r}"
        if worker is None:
            return "sidecar mode: the alert carries no worker label"
        source = self.source.worker(worker)
        if source is None:
            # Its sessions ended with it: nothing to clean, nothing to retry.
            return f"worker {worker!r} serves no socket (it has exited)"
        return source

    async def _verify(self, batch: _Batch) -> list[_Candidate]:
        """Keep the alerts whose user the registry itself sees over a threshold."""
        # A source that finds users in batches (private ids) is asked once for them all:
        # no alert costs a search of the sessions of its own.
        named: dict[int, tuple[LooksUpInBatches, set[str]]] = {}
        for cand in batch.candidates:
            if isinstance(cand.source, LooksUpInBatches):
                named.setdefault(id(cand.source), (cand.source, set()))[1].add(cand.user_id)
        for source, user_ids in named.values():
            await source.look_up(user_ids)
        violating = []
        for n, cand in enumerate(batch.candidates, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # an in-process check never suspends; let scrapes in
            assert cand.source is not None
            result = await cand.source.monitor_user(cand.user_id)
            if isinstance(result, MonitorResult) and result.violating:
                violating.append(cand)
                continue
            batch.decisions[cand.index] = _decision(cand.alert, *_not_violating(result))
        return violating

    async def _apply_breaker(self, batch: _Batch, violating: list[_Candidate]) -> list[_Candidate]:
        users = {c.target for c in violating}
        if len(users) < self.policy.breaker_min_users:
            return violating
        total_users = len((await peek(self.source)).sessions)
        if len(users) <= self.policy.breaker_max_share * total_users:
            return violating
        detail = (
            f"one payload would clean {len(users)} of {total_users} users, more than "
            f"breaker_max_share={self.policy.breaker_max_share:g}: nothing cleaned"
        )
        _log.warning("circuit breaker open: %s", detail)
        for cand in violating:
            batch.decisions[cand.index] = _decision(cand.alert, Outcome.BREAKER_OPEN, detail)
        return []

    async def _act(self, batch: _Batch, violating: list[_Candidate]) -> None:
        by_user: dict[_Target, list[_Candidate]] = {}
        for cand in violating:
            by_user.setdefault(cand.target, []).append(cand)
        allowed: list[_Target] = []
        for target, cands in by_user.items():
            if self._bucket.try_take():
                allowed.append(target)
                continue
            detail = f"cleanup rate limit ({self.policy.cleanup_rate_per_minute:g}/min) reached"
            for cand in cands:
                batch.decisions[cand.index] = _decision(cand.alert, Outcome.RATE_LIMITED, detail)
        if self.policy.dry_run:
            for target in allowed:
                for cand in by_user[target]:
                    batch.decisions[cand.index] = _decision(
                        cand.alert, Outcome.DRY_RUN, "would clean up (dry-run)"
                    )
            return
        targets: dict[_Target, RegistrySource] = {}
        for target in allowed:
            source = by_user[target][0].source
            assert source is not None  # every candidate was routed before verification
            targets[target] = source
        results = await self._clean_users(targets)
        for target in allowed:
            for cand in by_user[target]:
                batch.decisions[cand.index] = _from_result(cand.alert, results[target])

    async def _clean_users(
        self, targets: dict[_Target, RegistrySource]
    ) -> dict[_Target, CleanupResult | tuple[Outcome, str]]:
        """Clean sessions with bounded concurrency; a tuple says why one did not finish."""
        if not targets:
            return {}
        semaphore = asyncio.Semaphore(self.policy.cleanup_concurrency)
        started: set[_Target] = set()

        async def clean(target: _Target) -> CleanupResult:
            async with semaphore:
                started.add(target)
                # Re-checked under the registry lock with the detach: the user may have
                # become healthy while this cleanup waited for a slot.
                return await targets[target].cleanup_user(target[1], if_violating=True)

        tasks = {target: asyncio.create_task(clean(target)) for target in targets}
        for target, task in tasks.items():
            self._cleanups[task] = target
            task.add_done_callback(self._cleanups.pop)
        budget = self.policy.cleanup_timeout_seconds
        await asyncio.wait(tasks.values(), timeout=budget)
        results: dict[_Target, CleanupResult | tuple[Outcome, str]] = {}
        for target, task in tasks.items():
            if task.done():
                exc = task.exception()
                results[target] = (
                    task.result() if exc is None else (Outcome.ERROR, f"cleanup raised {exc!r}")
                )
            elif target in started:
                # Never cancel a started cleanup: its session is already detached.
                self._background.add(task)
                task.add_done_callback(functools.partial(self._background_done, target))
                results[target] = (Outcome.TIMEOUT, f"cleanup still running after {budget:g}s")
            else:
                task.cancel()
                results[target] = (
                    Outcome.TIMEOUT,
                    f"not started within {budget:g}s; nothing was touched",
                )
        return results

    async def drain(self, grace_seconds: float) -> list[tuple[str | None, str]]:
        """Wait up to `grace_seconds` for every cleanup started here (in a request or in
        the background); returns the (worker, user_id) of those still running then.

        Nothing is cancelled: a started cleanup has already detached its session.
        """
        running = list(self._cleanups)
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        return [self._cleanups[task] for task in running if not task.done()]

    def _background_done(self, target: _Target, task: asyncio.Task[CleanupResult]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        worker, user_id = target
        fields: dict[str, object] = {"user_id": user_id}
        if worker is not None:
            fields["worker"] = worker
        if exc is not None:
            fields["error"] = repr(exc)
        else:
            result = task.result()
            fields.update(agents_cleaned=result.agents_cleaned, errors=len(result.errors))
        _log.warning("late cleanup finished", extra={"fields": fields})

    def _remember(self, key: _AlertKey) -> None:
        self._handled[key] = None
        self._handled.move_to_end(key)
        while len(self._handled) > self.policy.dedupe_cache_size:
            self._handled.popitem(last=False)

    def _record(self, decision: Decision) -> None:
        fields = decision.as_dict()
        if self.policy.instance:
            fields["replica"] = self.policy.instance  # which replica decided, in every line
        _log.info("remediation decision", extra={"fields": fields})
        if self._on_decision is not None:
            self._on_decision(decision)


def _not_violating(result: MonitorResult) -> tuple[Outcome, str]:
    """Why a user's check does not allow a cleanup: the outcome and its detail."""
    if not isinstance(result, MonitorResult):  # a source written before MonitorResult
        return Outcome.ERROR, (
            f"monitor_user answered a {type(result).__name__}, not a MonitorResult"
            " (see the CHANGELOG's migration notes)"
        )
    match result.status:
        case Status.NO_SESSION:
            return Outcome.NO_SESSION, "the registry has no session for this user"
        case Status.HEALTHY:
            return Outcome.NOT_VIOLATING, "the registry sees no threshold exceeded"
        case Status.ERROR:
            return Outcome.ERROR, f"monitoring failed: {result.error}"
        case _:
            return Outcome.ERROR, f"monitoring answered {result.status.value!r}"


def _from_result(alert: Alert, result: CleanupResult | tuple[Outcome, str]) -> Decision:
    if isinstance(result, tuple):
        return _decision(alert, *result)
    if not result.found:
        return _decision(alert, Outcome.NO_SESSION, "session was already gone")
    if result.not_violating:
        return _decision(
            alert, Outcome.NOT_VIOLATING, "within every threshold when its cleanup started"
        )
    decision = _decision(alert, Outcome.CLEANED, f"{result.agents_cleaned} agents closed")
    if not result.ok:
        decision.outcome = Outcome.ERROR
        decision.detail = f"{len(result.errors)} agents failed to close: " + "; ".join(
            f"{agent}: {err}" for agent, err in sorted(result.errors.items())[:5]
        )
    decision.agents_cleaned = result.agents_cleaned
    decision.duration_seconds = result.duration_seconds
    return decision
