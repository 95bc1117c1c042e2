"""Schedules (``@flow.cron``, ``@flow.every``): each tick claimed once in Redis, then run as
a message of the schedule's internal queue.

Every worker that declares a schedule runs a ticker beside its consumer: it reads the next
tick and the server's time (``lua/schedule.lua``, ``peek``), sleeps until the tick, and
claims it with a compare-and-set on the stored next tick, in the same script that pushes
the runs (one message per tick to run, by the ``missed`` policy) to the internal queue
``Keys.ticks``. Whoever loses the race reads again: each tick is claimed once however many
workers and processes run the schedule, and no leader is needed. The runs are consumed as a
list queue (``QueueConsumer``), so a tick gets retries, timeouts, dead letters, tracking,
middleware and metrics like any message, with the same ``msg.id`` on every delivery; a
worker killed mid-run means a retry (at-least-once). A paused or stopping worker claims
nothing; ticks nobody claimed in time follow the ``missed`` policy. A schedule that no
running worker declares claims nothing: it stops. docs/design.md, "Schedules".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from ..connection import REDIS_ERRORS
from ..errors import ReplyError, Skip
from ..features.schedules import Schedule
from ..message import Kind, Message
from ..protocol import scripts
from ..protocol.envelope import envelope
from ..protocol.records import outcome_fields, parse_tick, tick_payload
from ..protocol.replies import text
from .base import log
from .queue import QueueConsumer, QueueItem

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ..connection import Connector
    from ..handler import Handler
    from ..keys import Keys
    from .contract import Context

#: How often a ticker reads the state at least (to see a pause, a resume, a change).
CHECK = 1.0


class ScheduleConsumer(QueueConsumer):
    """Claims the ticks of one schedule and runs them from its internal queue."""

    kind: ClassVar[Kind] = "schedule"
    scripts: ClassVar[tuple[scripts.Script, ...]] = (*scripts.QUEUE_SCRIPTS, scripts.SCHEDULE)

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__(handler, ctx, middleware, key)
        assert handler.schedule is not None
        self.schedule: Schedule = handler.schedule
        self.name = self.keys.ticks  # the list this queue consumer reads
        self.state = self.keys.schedule

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._tick_loop)
            await super().maintain()

    async def _tick_loop(self) -> None:
        failing = False
        while True:
            try:
                wait = await self.tick()
                if failing:
                    log.warning("%s: claims go through again", self)
                failing = False
            except REDIS_ERRORS as exc:
                if isinstance(exc, ReplyError) and not failing:  # once per outage
                    log.warning("%s: cannot claim ticks (%s); will try again", self, exc)
                failing = failing or isinstance(exc, ReplyError)
                wait = CHECK
            except Exception:  # a bug here must not stop the handlers: log, go on
                log.exception("%s: the ticker failed", self)
                wait = CHECK
            await anyio.sleep(wait)

    async def tick(self) -> float:
        """Claim what is due, if anything; the seconds until the next look."""
        if self.halted:  # paused or stopping: claim nothing (the policy covers it later)
            return 0.25
        schedule, connector = self.schedule, self.connector
        cur, spec, now = await connector.run(scripts.schedule_peek(self.state, self.name))
        cur, spec, now = text(cur), text(spec), int(now)
        if not cur or spec != schedule.spec:  # new, or its expression or period changed
            first = schedule.after(now)
            if await self._claim(cur, first, 0, None, []) and cur:
                log.warning("%s: the schedule changed (%s -> %s); next tick at %s", self,
                            spec, schedule.spec, Message.time(first))  # fmt: skip
            return min(CHECK, (first - now) / 1000)
        due = int(cur)
        if now < due:
            return min(CHECK, (due - now) / 1000)
        plan = schedule.plan(due, now)
        items = [
            envelope(tick_payload(tick, missed), schedule.tick_id(tick), enqueued_ms=now)
            for tick, missed in plan.runs
        ]
        if await self._claim(cur, plan.next, plan.missed, plan.last, items) and plan.missed:
            log.warning(
                "%s: %d ticks missed (missed=%r): %d run%s", self, plan.missed,
                schedule.missed, len(items), "" if len(items) == 1 else "s",
            )  # fmt: skip
        return 0.0

    async def _claim(
        self, cur: str, next_tick: int, missed: int, last: int | None, items: list[bytes]
    ) -> bool:
        call = scripts.schedule_claim(
            self.state, self.name, expected=cur, next_tick=next_tick, spec=self.schedule.spec,
            missed=missed, last=last, items=items,
        )  # fmt: skip
        return bool(await self.connector.run(call))

    def message(self, item: QueueItem, value: Any) -> Message[Any]:
        msg = super().message(item, value)
        msg.scheduled_for = parse_tick(msg.raw)
        return msg


class TickOutcome:
    """Consume middleware of a schedule: records how its last run ended in the schedule's
    state (``completed``, ``skipped``, ``failed`` with the error), for ``redisflow stats``;
    best effort."""

    def __init__(self, connector: Connector, keys: Keys) -> None:
        self.connector, self.state = connector, keys.schedule

    async def consume(self, msg: Message[Any], call_next: Callable[..., Awaitable[Any]]) -> Any:
        """Run the tick, then record its outcome."""
        try:
            result = await call_next(msg)
        except Skip:
            await self._record("skipped", "")
            raise
        except Exception as exc:
            await self._record(f"failed (attempt {msg.attempt})", f"{type(exc).__name__}: {exc}")
            raise
        await self._record("completed", "")
        return result

    async def _record(self, outcome: str, error: str) -> None:
        try:
            await self.connector.send("HSET", self.state, *outcome_fields(outcome, error))
        except REDIS_ERRORS as exc:
            log.debug("%s: outcome not recorded: %s", self.state, exc)
