"""Runs every key's life: one actor per key applies events in order and performs the effects.

For each event the actor asks `lifecycle.decide`, writes the new state to the ledger and waits
for the acknowledgement, and only then performs the effects through `Steps` (POST, poll,
fetch, store, publish). What a step learns comes back as the next event. Keys run
concurrently behind the in-flight `Slots`; one key's events never run concurrently, so a
duplicate record, a webhook and a poll cannot race each other into a second submission.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol

from genrelay.consumer import lifecycle as lc
from genrelay.consumer.dispatch.backoff import Pacer, jittered
from genrelay.consumer.dispatch.budgets import Budgets
from genrelay.consumer.dispatch.slots import Slots
from genrelay.consumer.dispatch.timers import KeyTimers
from genrelay.consumer.errors import Fenced, RecordTooLarge
from genrelay.consumer.intake.intake import SourceRecord
from genrelay.consumer.ledger.partition_writer import Outgoing
from genrelay.consumer.provider.provider import Priority
from genrelay.consumer.service import failpoints
from genrelay.consumer.service.logs import job_context
from genrelay.consumer.service.telemetry import job_span, trace_id_of, traceparent_of
from genrelay.consumer.steps import Observers, Steps
from genrelay.schemas.completions import CompletionEvent, ErrorDetail
from genrelay.schemas.ledger import LedgerRecord, Phase

# A key's timer delivers one of these: one object each, not one per waiting key.
_DUE: dict[lc.Step | Literal["search"], lc.Due] = {
    step: lc.Due(step) for step in ("poll", "fetch", "store", "search")
}


class KeyStates(Protocol):
    """Where the keys' states are committed: the ledger (or, in tests, a fake of it)."""

    def get(self, key: str, partition: int | None = None) -> LedgerRecord | None:
        """The key's state; `partition` (the key's own) narrows where to look."""
        ...

    def keys_in(self, partition: int) -> list[str]:
        """The open keys of a partition."""
        ...

    def is_open(self, key: str) -> bool:
        """Whether the key has a state that is not finished and announced (cheap: no read)."""
        ...

    def phase(self, key: str) -> Phase | None:
        """An open key's phase, None for others (cheap: no read)."""
        ...

    async def write(
        self, record: LedgerRecord, partition: int, *, also: tuple[Outgoing, ...] = ()
    ) -> None:
        """Commit the state (with `also`, atomically); `Fenced` if no longer the owner."""
        ...


@dataclass(frozen=True)
class Timing:
    poll_grace: float
    poll_max_interval: float
    history_search_interval: float = 5.0  # between searches for an ambiguous submit
    retry_base: float = 0.5
    retry_max: float = 30.0
    poll_rate: float = 200.0  # status polls per second, at most, for the whole replica


# An event waiting in a key's inbox: the event, the callback to run once its state is durable,
# and the Kafka record it came from (if any).
_Queued = tuple[lc.Event, Callable[[], None] | None, Any]


@dataclass(slots=True)
class _Actor:
    """A key's actor. A key waiting for news (most in-flight keys) holds about 250 bytes here:
    no inbox until an event comes, no finished task."""

    key: str
    partition: int
    inbox: deque[_Queued] | None = None
    task: asyncio.Task[None] | None = None
    timer: object | None = None  # its pending timer's entry (`KeyTimers`)
    slot_wait: asyncio.Task[None] | None = None  # waiting for a slot (AcquireSlot)
    slot: tuple[str, str | None] | None = None  # (endpoint, tenant) while holding a slot
    polls: int = 0  # status polls since the last news, for their growing interval
    asked: int = 0  # times the provider could not say whether a webhook's request is ours
    hold: Callable[[], None] | None = None  # releases a budget reservation not yet committed
    closed: bool = False
    # A decided state not yet committed (`Decision.deferrable`): the key's next write commits
    # it, and then runs what waits for it to be durable (its input record's offset may commit).
    staged: LedgerRecord | None = None
    unsaved: list[Callable[[], None]] | None = None
    # Webhooks whose request is being asked about (is it our account's?), by request id: each
    # waits for its own answer, or for a committed state that makes its news moot.
    asking: dict[str, tuple[lc.News, list[Callable[[], None]]]] | None = None

    def push(self, queued: _Queued, *, first: bool = False) -> None:
        if self.inbox is None:
            self.inbox = deque()
        if first:
            self.inbox.appendleft(queued)
        else:
            self.inbox.append(queued)

    def take(self) -> _Queued:
        assert self.inbox
        queued = self.inbox.popleft()
        if not self.inbox:
            self.inbox = None
        return queued


class _Once:
    """Calls `callback` (if any) the first time it is called."""

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback

    def __call__(self) -> None:
        callback = self.take()
        if callback is not None:
            callback()

    def take(self) -> Callable[[], None] | None:
        """The callback, for someone else to call; this one then does nothing."""
        callback, self._callback = self._callback, None
        return callback


def _now() -> datetime:
    return datetime.now(UTC)


def _announcing(decision: lc.Decision) -> tuple[LedgerRecord, CompletionEvent] | None:
    """The finished state and its event, when a decision does nothing but announce them."""
    match decision:
        case lc.Decision(record=LedgerRecord() as record, effects=(lc.Publish(event=event),)):
            if record.terminal or record.event == event:
                return record, event
    return None


class Jobs:
    """The actors of every owned key."""

    def __init__(
        self,
        *,
        ledger: KeyStates,
        steps: Steps,
        slots: Slots,
        observers: Observers,
        group_id: str,
        policy: lc.Policy,
        timing: Timing,
        on_crash: Callable[[BaseException], None],
        budgets: Budgets | None = None,
    ) -> None:
        self._ledger = ledger
        self._budgets = budgets
        # Keys waiting for their tenant's budget, by tenant (unposted, slot given back).
        self._parked: dict[str, set[str]] = {}
        self._steps = steps
        self._slots = slots
        self._tracer = observers.tracer
        self._metrics = observers.metrics
        self._group_id = group_id
        self._policy = policy
        self._timing = timing
        self._poll_pacer = Pacer(timing.poll_rate)
        self._on_crash = on_crash
        self._actors: dict[str, _Actor] = {}
        self._released: set[int] = set()  # partitions given up, until assigned again
        self._timers: KeyTimers[_Actor, lc.Event] = KeyTimers(self._fire)

    # --- intake ---------------------------------------------------------------------------

    def deliver(
        self,
        key: str,
        partition: int,
        event: lc.Event,
        on_done: Callable[[], None] | None = None,
        source: SourceRecord | None = None,
    ) -> None:
        """Queue an event for a key; `on_done` runs once its state is durable."""
        if partition in self._released:
            return  # no longer ours: its new owner reads the record again
        actor = self._actors.get(key)
        if actor is None:
            actor = self._actors[key] = _Actor(key, partition)
        actor.push((event, on_done, source))
        self._ensure_running(actor)

    def resume(self, partition: int) -> int:
        """Restart the open keys of a just-restored partition; returns how many."""
        self._released.discard(partition)
        resumed = 0
        for key in self._ledger.keys_in(partition):
            record = self._ledger.get(key, partition)
            if record is None or (record.terminal and record.published):
                continue
            waiting = (Phase.ACCEPTED, Phase.SUBMITTING, Phase.BACKING_OFF, Phase.UNKNOWN)
            if record.phase not in waiting or record.job is not None:
                # Already at the provider: it counts against the limits without waiting.
                self._force_slot(self._actor(key, partition), record)
            self.deliver(key, partition, lc.Restored())
            resumed += 1
        return resumed

    async def release(self, partitions: set[int], grace: float) -> None:
        """Stop the actors of revoked partitions, letting running steps finish within `grace`.

        A submit already on the wire may finish (its answer is recorded); none may start.
        """
        self._released |= partitions
        leaving = [a for a in self._actors.values() if a.partition in partitions]
        for actor in leaving:
            actor.closed = True
            self._cancel_timer(actor)
            self._cancel_slot_wait(actor)
        running = [a.task for a in leaving if a.task and not a.task.done()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for actor in leaving:
            self._drop(actor)

    @property
    def active(self) -> int:
        return len(self._actors)

    def waiting_for_budget(self) -> dict[str, int]:
        return {tenant: len(keys) for tenant, keys in self._parked.items() if keys}

    def budget_changed(self, tenant: str | None = None) -> None:
        """Keys waiting for budget ask again: `tenant`'s, or every tenant's (spend fell, a new
        period began)."""
        tenants = list(self._parked) if tenant is None else [tenant]
        for name in tenants:
            for key in self._parked.pop(name, set()):
                actor = self._actors.get(key)
                if actor is not None and not actor.closed:
                    self._deliver_internal(actor, lc.BudgetMayFit())

    def state(self, key: str, partition: int) -> LedgerRecord | None:
        """The key's current state: as decided, even if not yet committed."""
        actor = self._actors.get(key)
        return self._ledger.get(key, partition) if actor is None else self._state(actor)

    def phases(self) -> dict[str, int]:
        """How many owned keys are in each open phase (for health and metrics)."""
        counts: dict[str, int] = {}
        for key, actor in self._actors.items():
            phase = actor.staged.phase if actor.staged else self._ledger.phase(key)
            name = phase.value if phase else "WAITING"
            counts[name] = counts.get(name, 0) + 1
        return counts

    # --- the actor loop -------------------------------------------------------------------

    def _actor(self, key: str, partition: int) -> _Actor:
        actor = self._actors.get(key)
        if actor is None:
            actor = self._actors[key] = _Actor(key, partition)
        return actor

    def _ensure_running(self, actor: _Actor) -> None:
        if actor.closed or (actor.task is not None and not actor.task.done()):
            return
        actor.task = asyncio.get_running_loop().create_task(self._run(actor), name=actor.key)
        actor.task.add_done_callback(partial(self._ran, actor))

    def _ran(self, actor: _Actor, task: asyncio.Task[None]) -> None:
        if actor.task is task:
            actor.task = None  # a finished task is of no more use, and holds memory
        self._check_crash(task)

    def _check_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_crash(exc)

    async def _run(self, actor: _Actor) -> None:
        try:
            await self._drain_inbox(actor)
        except Fenced:
            # Another replica owns this key now and has read its committed state: stop here,
            # with nothing written and nothing posted since the last committed transaction.
            actor.closed = True
            self._drop(actor)

    async def _drain_inbox(self, actor: _Actor) -> None:
        while actor.inbox and not actor.closed:
            event, on_done, source = actor.take()
            record = self._state(actor)
            request_id = record.job.request_id if record and record.job else None
            trace_id = trace_id_of(record.traceparent) if record else None
            durable = _Once(on_done)
            with job_context(key=actor.key, request_id=request_id, trace_id=trace_id):
                await self._apply(actor, event, source, durable)
            durable()
        self._maybe_forget(actor)

    async def _apply(
        self,
        actor: _Actor,
        event: lc.Event,
        source: SourceRecord | None,
        durable: _Once,
    ) -> None:
        """Decide, commit the decided state, then perform the effects. `durable` runs as soon
        as the state is committed (the record's offset may commit), before any effect; for a
        deferred state, once the key's next write commits it."""
        record = self._state(actor)
        if isinstance(event, lc.SubmitCommand):
            if record is not None:
                self._metrics.duplicate_suppressed()
            elif source is not None:
                event = self._traced(actor.key, event, source)
        if isinstance(event, lc.SlotGranted) and record is not None:
            event = await self._with_budget(actor, record, event)
        try:
            decision = lc.decide(record, event, actor.key, _now(), self._policy)
            self._count(event, record, decision)
            decision = await self._granted_at_once(actor, decision)
            if (built := _announcing(decision)) is not None:
                # The outcome, its event and the note that it was announced commit together.
                self._cancel_slot_wait(actor)
                await self._publish(actor, *built)
                return
            if decision.record is not None and decision.deferrable:
                self._stage(actor, decision.record, durable)
            elif decision.record is not None:
                decision = await self._write(actor, decision)
            elif (asked := _asked_about(decision)) is not None:
                # The webhook's news is settled by the answer: its offset waits for that (an
                # adoption commits it; a crash meanwhile reads the webhook again).
                self._hold_asking(actor, asked, durable)
            elif isinstance(event, lc.AccountChecked):
                # Answered without a change (another account's request, or the key moved on).
                self._answered(actor, event.news.request_id)
        finally:
            # A reservation is counted by its committed state from here (or was not made).
            self._release_hold(actor)
        if decision.record is not None:
            if isinstance(event, lc.Accepted) and decision.record.phase is Phase.SUBMITTED:
                failpoints.reached("after_submitted")
            if decision.record.terminal:
                self._release_slot(actor)
                self._cancel_timer(actor)  # a pending poll or retry has nothing left to do
                self._cancel_slot_wait(actor)
                self._unpark(actor)
        elif isinstance(event, lc.SlotGranted):
            self._release_slot(actor)  # granted to a key that no longer needs it (cancelled)
        durable()
        for effect in decision.effects:
            await self._perform(actor, effect, source)

    def _count(self, event: lc.Event, before: LedgerRecord | None, decision: lc.Decision) -> None:
        after = decision.record
        if isinstance(event, lc.StepFailed) and after is not None:
            self._metrics.step_failed(event.step, exhausted=after.terminal)
        if isinstance(event, lc.HistorySearched) and after is not None:
            self._count_reconciled(before, after)
        if isinstance(event, lc.SlotGranted) and (verdict := event.budget) and not verdict.fits:
            tenant = before.request.tenant or "" if before else ""
            self._metrics.budget_refused(tenant, waits=verdict.when_exceeded == "wait")

    async def _with_budget(
        self, actor: _Actor, record: LedgerRecord, granted: lc.SlotGranted
    ) -> lc.SlotGranted:
        """The grant with its budget verdict; a reservation that fits is held until its state
        is committed (so keys granted meanwhile count it)."""
        if self._budgets is None or record.phase is not Phase.ACCEPTED or granted.budget:
            return granted
        verdict = await self._budgets.verdict(record, _now())
        if verdict is not None and verdict.fits:
            account = (record.request.tenant or "", verdict.period_start)
            actor.hold = self._budgets.spend.hold(account, verdict.estimate_usd)
        return lc.SlotGranted(verdict)

    def _release_hold(self, actor: _Actor) -> None:
        if actor.hold is not None:
            actor.hold()
            actor.hold = None

    def _count_reconciled(self, before: LedgerRecord | None, after: LedgerRecord) -> None:
        if after.phase is Phase.SUBMITTED:
            self._metrics.reconciled("adopted")
        elif before is not None and after.proven_absent > before.proven_absent:
            self._metrics.reconciled("reposted")

    async def _granted_at_once(self, actor: _Actor, decision: lc.Decision) -> lc.Decision:
        """A key that would wait for a slot while one is free takes it now: its `ACCEPTED`
        state is never written alone, `SUBMITTING` (one commit, not two) supersedes it."""
        accepted = decision.record
        waits = len(decision.effects) == 1 and isinstance(decision.effects[0], lc.AcquireSlot)
        if not waits or accepted is None or actor.slot is not None:
            return decision
        if actor.closed or not self._slots.try_acquire(accepted.endpoint, _tenant(accepted)):
            return decision
        self._note_slot(actor, accepted)
        granted = await self._with_budget(actor, accepted, lc.SlotGranted())
        decision = lc.decide(accepted, granted, actor.key, _now(), self._policy)
        self._count(granted, accepted, decision)
        if decision.record is None:
            # It waits for budget: the new key's state is written all the same.
            return lc.Decision(accepted, decision.effects)
        return decision

    async def _write(self, actor: _Actor, decision: lc.Decision) -> lc.Decision:
        """Commit the decided state; one too large to store ends the key with what fits."""
        assert decision.record is not None
        try:
            await self._commit(actor, decision.record)
        except RecordTooLarge as exc:
            self._metrics.too_large()
            error = ErrorDetail(type="result_too_large", message=str(exc), retryable=False)
            decision = lc.decide(decision.record, lc.TooLarge(error), actor.key, _now())
            assert decision.record is not None
            await self._commit(actor, decision.record)
        return decision

    async def _commit(
        self, actor: _Actor, record: LedgerRecord, also: tuple[Outgoing, ...] = ()
    ) -> None:
        """Write the key's state; it carries whatever was staged, now durable too."""
        await self._ledger.write(record, actor.partition, also=also)
        actor.staged = None
        self._settled(actor)
        for request_id, (news, _) in list((actor.asking or {}).items()):
            if not lc.may_adopt(record, news):
                self._answered(actor, request_id)  # adopted, or moved on: its news is moot

    def _stage(self, actor: _Actor, record: LedgerRecord, durable: _Once) -> None:
        """Keep a deferrable state in memory until the key's next write; what waits for it to
        be durable waits for that write (if the partition moves first, it never runs)."""
        actor.staged = record
        if (callback := durable.take()) is not None:
            actor.unsaved = [*(actor.unsaved or ()), callback]

    def _settled(self, actor: _Actor) -> None:
        """Run what waited for the key's staged state to be durable."""
        unsaved, actor.unsaved = actor.unsaved, None
        for callback in unsaved or ():
            callback()

    def _hold_asking(self, actor: _Actor, news: lc.News, durable: _Once) -> None:
        if (callback := durable.take()) is None:
            return
        asking = actor.asking = actor.asking or {}
        _, callbacks = asking.setdefault(news.request_id, (news, []))
        callbacks.append(callback)

    def _answered(self, actor: _Actor, request_id: str) -> None:
        """Run what waited for the answer about `request_id`."""
        if actor.asking is None or (held := actor.asking.pop(request_id, None)) is None:
            return
        if not actor.asking:
            actor.asking = None
        for callback in held[1]:
            callback()

    def _state(self, actor: _Actor) -> LedgerRecord | None:
        return actor.staged or self._ledger.get(actor.key, actor.partition)

    def _traced(self, key: str, event: lc.SubmitCommand, source: SourceRecord) -> lc.SubmitCommand:
        # The job's span links to the producer's; its context is what the ledger keeps, so the
        # steps (and a replica that takes over after a crash) continue the same trace.
        with job_span(
            self._tracer,
            key,
            producer_traceparent=event.traceparent,
            job_traceparent=None,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            consumer_group=self._group_id,
        ) as span:
            return replace(event, traceparent=traceparent_of(span) or event.traceparent)

    async def _perform(self, actor: _Actor, effect: lc.Effect, source: Any) -> None:
        """Perform one effect. What it learns re-enters through the key's inbox, next."""
        record = self._state(actor)
        assert record is not None or isinstance(effect, lc.Conflict)
        match effect:
            case lc.AcquireSlot(until=until):
                assert record is not None
                self._await_slot(actor, record)
                if until is not None:
                    # No slot by the deadline: the key ends then, unpaid.
                    self._schedule(actor, _seconds_until(until), lc.DeadlinePassed())
            case lc.AwaitBudget():
                assert record is not None
                self._release_slot(actor)
                self._park(actor, record.request.tenant or "")
            case lc.Post(start_by=start_by):
                await self._submit(actor, start_by)
            case lc.PostLater(at=at):
                self._schedule(actor, _seconds_until(at), lc.RetryDue())
            case lc.AwaitAdoption(until=until):
                self._schedule(actor, _seconds_until(until), lc.UnknownUnresolved())
            case lc.SearchHistory():
                interval = self._timing.history_search_interval * random.uniform(1.0, 1.5)
                self._schedule(actor, interval, _DUE["search"])
            case lc.Watch():
                actor.polls = 0
                # Spread: keys submitted together are not first polled together.
                grace = self._timing.poll_grace * random.uniform(1.0, 1.5)
                self._schedule(actor, grace, _DUE["poll"])
            case lc.PollAgain(at_least=at_least):
                # At least as long as the provider asked, when it asked us to slow down.
                self._schedule(actor, max(at_least or 0.0, self._next_poll(actor)), _DUE["poll"])
            case lc.RetryStep(step=step, failures=failures):
                self._schedule(actor, self.backoff(failures), _DUE[step])
            case lc.AskAgain(news=news):
                # Beside the key's timer, which may hold its poll or search.
                actor.asked += 1
                delay = self.backoff(actor.asked)
                asyncio.get_running_loop().call_later(delay, self._redeliver, actor, news)
            case lc.Poll() | lc.Search() | lc.ConfirmAccount() | lc.FetchResult() | lc.StoreFiles():
                assert record is not None
                self._next(actor, await self._learn(actor, record, effect))
            case lc.Publish(event=event):
                assert record is not None
                await self._publish(actor, record, event)
            case lc.Replay(event=event):
                await self._steps.replay(event, actor.partition)
            case lc.Conflict():
                await self._steps.conflict(source, actor.partition)
            case lc.CancelAtProvider(job=job):
                assert record is not None
                await self._steps.cancel(record, job)

    async def _learn(
        self,
        actor: _Actor,
        record: LedgerRecord,
        effect: lc.Poll | lc.Search | lc.ConfirmAccount | lc.FetchResult | lc.StoreFiles,
    ) -> lc.Event:
        """Run a step that asks the outside world something; its answer is the next event."""
        match effect:
            case lc.Poll():
                await self._poll_pacer.wait()
                return await self._steps.poll(record, actor.partition)
            case lc.Search():
                return await self._steps.search(record)
            case lc.ConfirmAccount(news=news):
                checked = await self._steps.ours(news)
                if checked.ours:
                    actor.asked = 0
                return checked
            case lc.FetchResult():
                return await self._steps.fetch(record)
            case lc.StoreFiles():
                return await self._steps.store(record)

    async def _publish(self, actor: _Actor, record: LedgerRecord, event: CompletionEvent) -> None:
        # The event and the ledger's note that it was announced commit in one transaction,
        # so a crash can neither lose the event nor announce it twice. Until that commit
        # nothing was announced, so a state too large to store ends the key another way.
        announced = lc.decide(record, lc.Published(), actor.key, _now(), self._policy)
        assert announced.record is not None
        assert not announced.effects

        async def commit(completion: Outgoing) -> None:
            assert announced.record is not None
            await self._commit(actor, announced.record, also=(completion,))

        try:
            await self._steps.publish(event, record.traceparent, commit, _tenant(record))
        except RecordTooLarge as exc:
            self._metrics.too_large()
            error = ErrorDetail(type="result_too_large", message=str(exc), retryable=False)
            bare = lc.decide(record, lc.TooLarge(error), actor.key, _now())
            built = _announcing(bare)
            assert built is not None
            await self._publish(actor, *built)
            return
        self._release_slot(actor)
        self._cancel_timer(actor)

    # --- submitting ------------------------------------------------------------------------

    def _redeliver(self, actor: _Actor, event: lc.Event) -> None:
        if actor.closed:
            return  # its partition was given up
        # To the key's actor now: the one that asked may have been forgotten and replaced.
        self._deliver_internal(self._actors.get(actor.key, actor), event)

    async def _submit(self, actor: _Actor, start_by: datetime | None = None) -> None:
        record = self._state(actor)
        assert record is not None
        assert record.phase is Phase.SUBMITTING
        waited = await self._hold_slot(actor, record)
        if actor.closed:
            # The partition was revoked while this key waited for its intent to be durable or
            # for a slot. Its new owner may already be submitting it: never post from here.
            return
        if waited:
            # The intent was committed before the wait; the partition may have moved since.
            # Committing again proves this replica still owns it (`Fenced` otherwise).
            touched = record.model_copy(update={"updated_at": _now()})
            await self._commit(actor, touched)
        self._next(actor, await self._steps.submit(record, start_by))

    # --- timers, slots, bookkeeping -------------------------------------------------------

    def _schedule(self, actor: _Actor, delay: float, event: lc.Event) -> None:
        """Deliver `event` to the actor after `delay` seconds (one pending timer per key)."""
        if not actor.closed:
            self._timers.set(actor, delay, event)

    def _fire(self, actor: _Actor, event: lc.Event) -> None:
        if not actor.closed:
            self._deliver_internal(actor, event)

    def _cancel_timer(self, actor: _Actor) -> None:
        self._timers.cancel(actor)

    def _next_poll(self, actor: _Actor) -> float:
        # Adaptive: 1 s, then 1.6 times longer per poll up to the cap; jitter avoids herds.
        actor.polls += 1
        base = min(self._timing.poll_max_interval, 1.6 ** (actor.polls - 1))
        return base * random.uniform(0.8, 1.2)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter for the `attempt`-th retry (1-based)."""
        timing = self._timing
        return jittered(attempt, base=timing.retry_base, cap=timing.retry_max, floor=0.5)

    def _await_slot(self, actor: _Actor, record: LedgerRecord) -> None:
        """Wait for a slot beside the actor, so a cancel can still reach the key meanwhile."""
        if actor.closed or actor.slot_wait is not None:
            return
        if actor.slot is not None:
            self._deliver_internal(actor, lc.SlotGranted())
            return

        async def wait() -> None:
            priority = Priority(record.request.priority)
            await self._slots.acquire(record.endpoint, priority, _tenant(record), _due(record))
            actor.slot_wait = None
            self._note_slot(actor, record)
            if actor.closed:
                self._release_slot(actor)
                return
            self._deliver_internal(actor, lc.SlotGranted())

        actor.slot_wait = asyncio.get_running_loop().create_task(wait())
        actor.slot_wait.add_done_callback(self._check_crash)

    def _cancel_slot_wait(self, actor: _Actor) -> None:
        if actor.slot_wait is not None:
            actor.slot_wait.cancel()
            actor.slot_wait = None

    def _deliver_internal(self, actor: _Actor, event: lc.Event) -> None:
        actor.push((event, None, None))
        self._actors.setdefault(actor.key, actor)
        self._ensure_running(actor)

    def _next(self, actor: _Actor, event: lc.Event) -> None:
        """What an effect learnt: the key's next event, ahead of any that arrived meanwhile
        (the key's loop is running, so it takes it at once)."""
        actor.push((event, None, None), first=True)

    async def _hold_slot(self, actor: _Actor, record: LedgerRecord) -> bool:
        """Take a slot for the key; True when it had to wait for one."""
        if actor.slot is not None:
            return False
        priority = Priority(record.request.priority)
        waited = not self._slots.available(record.endpoint, _tenant(record))
        await self._slots.acquire(record.endpoint, priority, _tenant(record), _due(record))
        self._note_slot(actor, record)
        return waited

    def _force_slot(self, actor: _Actor, record: LedgerRecord) -> None:
        if actor.slot is None:
            self._slots.force(record.endpoint, _tenant(record))
            self._note_slot(actor, record)

    def _note_slot(self, actor: _Actor, record: LedgerRecord) -> None:
        actor.slot = (record.endpoint, _tenant(record))

    def _release_slot(self, actor: _Actor) -> None:
        if actor.slot is None:
            return
        endpoint, tenant = actor.slot
        actor.slot = None
        self._slots.release(endpoint, tenant)

    def _maybe_forget(self, actor: _Actor) -> None:
        # Finished keys keep only their ledger record; the actor object is dropped.
        idle = not actor.inbox and actor.timer is None and actor.slot_wait is None
        if idle and not self._ledger.is_open(actor.key):
            self._drop(actor)

    def _park(self, actor: _Actor, tenant: str) -> None:
        self._parked.setdefault(tenant, set()).add(actor.key)

    def _unpark(self, actor: _Actor) -> None:
        for keys in self._parked.values():
            keys.discard(actor.key)

    def _drop(self, actor: _Actor) -> None:
        self._unpark(actor)
        self._cancel_timer(actor)
        self._cancel_slot_wait(actor)
        self._release_slot(actor)
        # Never committed: the next owner learns it again.
        actor.staged = actor.unsaved = actor.asking = None
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]


def _asked_about(decision: lc.Decision) -> lc.News | None:
    """The webhook's news, when the decision asks the provider whose request it named."""
    for effect in decision.effects:
        if isinstance(effect, lc.ConfirmAccount | lc.AskAgain):
            return effect.news
    return None


def _seconds_until(at: datetime) -> float:
    return (at - _now()).total_seconds()


def _due(record: LedgerRecord) -> float | None:
    deadline = record.request.deadline
    return None if deadline is None else deadline.timestamp()


def _tenant(record: LedgerRecord) -> str | None:
    return record.request.tenant or None
