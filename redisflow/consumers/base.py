"""What every consumer shares: a fixed pool of worker coroutines fed from a deque, the
prefetch window and acks, reconnection, and the two-phase shutdown.

A kind implements the abstract methods of ``Consumer``: the Redis side (``connect``,
``fetch_loop``, ``flush_acks``, ``release``, ``idle``), reading an item (``decode``,
``message``, ``attempt``, ``raw``) and settling it (``done``, ``retry``, ``bury``). The hot
path is ``_work``: no task, lock or context manager per message (docs/design.md,
"The hot path"). Failures go to ``verdicts.py``, results to ``results.py``; a handler with
middleware (the flow's, and the built-ins it asks for) is called through its chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic

import anyio
from anyio.abc import TaskStatus

from ..connection import REDIS_ERRORS, Backoff
from ..errors import AuthError, PermissionDenied, ReplyError
from ..features.cancels import Cancels
from ..features.tracking import Tracking
from ..keys import Keys
from ..message import Kind, Message, MessageBatch
from ..middleware import consume_chain
from .batches import Batching
from .cancelling import Cancelling
from .contract import Context, Gate, Item, Stats
from .pausing import Pausing
from .reporting import Reporter
from .results import Replying
from .verdicts import Verdicts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..features.tracking import Status
    from ..handler import Handler

log = logging.getLogger("redisflow")


class Consumer(Pausing, Batching[Item], Replying[Item], Cancelling[Item], ABC, Generic[Item]):
    """The runtime of one handler: fetch loop, worker pool, verdicts, shutdown."""

    kind: ClassVar[Kind]

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        middleware: Sequence[object] = (),
        key: str | None = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.key = key or handler.source.name  # its source's name, or one partition
        self.options = handler.options
        self.invoke = handler.bind(ctx.resources)  # ConfigError if a resource is missing
        self.ctx = ctx
        self.config = ctx.config
        self.connector = ctx.connector
        self.keys = Keys(ctx.config.prefix, self.key)
        #: The consume chain around the handler; None: the handler is called directly.
        self.chain = consume_chain(middleware, self.call) if middleware else None
        self.tracking = next((m for m in middleware if isinstance(m, Tracking)), None)
        self.verdicts: Verdicts[Item] = Verdicts(self)
        self.stats = Stats()
        self.reporter = Reporter(ctx.connector, self.keys, handler.name, ctx.worker_id)
        self.stopping = False
        self.backoff = Backoff(str(self), ctx.config.give_up_after)
        self.link = ctx.connector.link(self.key, role=f"fetch:{self.key}")
        # A batch handler runs ``concurrency`` batches at once: hold enough to fill them.
        self.prefetch = max(
            ctx.config.prefetch, self.options.concurrency * (self.options.batch or 1)
        )
        self.gate: Gate | None = None  # shared by the partitions of one handler
        self._dq: deque[Item] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._busy = 0
        self._draining = False
        self._grace: anyio.CancelScope | None = None  # the drain's wait (``hurry`` ends it)
        self._hurried = False
        self._unfinished: list[Item] = []
        self._all_idle = anyio.Event()
        self._connected = False
        self.cancels = Cancels(ctx.connector, ctx.config.prefix)
        self.marks = {}
        self._cancel_version = None
        self._running = []

    def __str__(self) -> str:
        at = "" if self.key == self.handler.source.name else f" at {self.key}"
        return f"{self.handler.source}{at} [{self.handler.name}]"

    # -- what each kind implements --------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """(Re)open ``link`` and prepare the source (load scripts, create the group...)."""

    @abstractmethod
    async def fetch_loop(self) -> None:
        """Fill the deque (``feed``) until ``halted`` (stopping or paused)."""

    @abstractmethod
    async def idle(self) -> bool:
        """Whether nothing is left to do: no message held here or waiting in Redis (due
        later included). ``Flow.wait_idle`` polls it."""

    @abstractmethod
    def decode(self, item: Item) -> Any:
        """Validate an item's payload; raise DecodeError if it cannot be."""

    @abstractmethod
    def message(self, item: Item, value: Any) -> Message[Any]:
        """The Message envelope of an item."""

    @abstractmethod
    def attempt(self, item: Item) -> int:
        """The delivery attempt of an item, 1 on first delivery."""

    @abstractmethod
    def raw(self, item: Item) -> bytes:
        """The payload bytes of an item, for the dead letters."""

    def dead_extra(self, item: Item) -> dict[str, Any]:
        """What this kind adds to an item's dead letter (``protocol/records.py``)."""
        return {}

    @abstractmethod
    def done(self, item: Item) -> None:
        """Record that an item is settled (its ack is sent in a later request)."""

    @abstractmethod
    async def retry(self, item: Item, delay: float, count: bool = True) -> None:
        """Deliver the item again after ``delay`` seconds, then settle it; ``count=False``
        keeps its attempt number (a deferral, not a failure)."""

    @abstractmethod
    async def bury(self, item: Item, fields: dict[str, Any]) -> None:
        """Write the item to the dead letters, then settle it."""

    @abstractmethod
    async def release(self, started: list[Item], unstarted: list[Item]) -> None:
        """Flush acks and hand unfinished items back to Redis (shielded, at the end):
        ``started`` ones were cancelled in their handler, ``unstarted`` ones never ran."""

    def keep(self, item: Item) -> None:
        self._unfinished.append(item)  # handed back to Redis when the consumer stops

    async def track(self, msg: Message[Any], status: Status, error: str | None = None) -> None:
        """Record a status change of a tracked handler's message (best effort)."""
        if self.tracking is not None:
            await self.tracking.record(msg, status, error)

    async def call(self, msg: Message[Any]) -> Any:
        """The innermost step of the consume chain: the handler, within its ``timeout``."""
        if isinstance(msg, MessageBatch):
            return await self.call_batch(msg)
        timeout = self.options.timeout
        if timeout is None:
            return await self.invoke(msg.payload, msg)
        with anyio.fail_after(timeout):
            return await self.invoke(msg.payload, msg)

    async def drained(self) -> bool:
        """Whether the key holds nothing for anyone (an old layout may then be dropped)."""
        return await self.idle()

    def recoverable(self, exc: ReplyError) -> bool:
        """Whether an error reply in the fetch loop is cured by setting up again."""
        return False

    async def maintain(self) -> None:
        """Periodic housekeeping that runs until the consumer has released everything."""
        await anyio.sleep_forever()

    def end_maintenance(self) -> None:
        """The handlers are done and ``maintain`` is about to be cancelled (a kind whose
        housekeeping must not be cut off mid-call bounds its wait here)."""

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Set up, report ready, consume until stopped, drain, release."""
        try:
            await self.connect()
            self._connected = True
        except ReplyError as exc:  # a full Redis refuses a new group or lease: start anyway,
            if exc.code != "OOM":  # the fetch loop sets up again once there is room
                raise
            log.warning("%s: Redis is full (%s); setting up when it has room", self, exc)
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.maintain)
                gauges = lambda: (self.stats, self.backlog)  # noqa: E731
                outer.start_soon(self.reporter.loop, self.config.report_interval, gauges)
                outer.start_soon(self.link.watch, self.config.block_timeout)  # a hung server
                outer.start_soon(self.watch_cancels)
                async with anyio.create_task_group() as workers:
                    work = self._work if self.options.batch is None else self._work_batches
                    for _ in range(self.options.concurrency):
                        workers.start_soon(work)
                    task_status.started()
                    try:
                        await self.fetch()
                    finally:
                        await self._drain(workers.cancel_scope)
                outer.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_all()

    async def _release_all(self) -> None:
        started, unstarted, gone = self._unfinished, list(self._dq), self.backoff.gave_up
        self._dq.clear()
        try:  # after giving up on Redis: one short try, and no final report
            with anyio.fail_after(1 if gone else 10):
                await self.release(started, unstarted)
        except Exception as exc:  # the messages stay leased; a peer recovers them
            if left := len(started) + len(unstarted):
                log.warning("%s: could not hand back %d messages: %r", self, left, exc)
        with contextlib.suppress(Exception), anyio.move_on_after(0 if gone else 2):
            await self.reporter.report(self.stats, self.backlog, final=True)
        await self.link.close()

    def stop(self) -> None:
        """Stop fetching; in-flight handlers go on for the grace period."""
        if not self.stopping:
            self.stopping = True
            self.halt()

    def interrupt(self) -> None:
        """Wake a fetch that blocks in Redis, so that it sees ``stopping`` (never by
        cancelling it: docs/design.md, "Stopping a blocked fetch")."""
        self.ctx.spawn(self.connector.wake, self.link, lambda: self._blocked, str(self))

    @property
    def busy(self) -> int:
        """Handlers running now."""
        return self._busy

    def hurry(self) -> None:
        """Wait no more for running handlers (a second Ctrl-C): cancel them, hand back."""
        self._hurried = True
        if self._grace is not None:
            self._grace.cancel()

    async def _drain(self, workers: anyio.CancelScope) -> None:
        self.stopping = True
        self._draining = True
        for fut in self._idle:
            if not fut.done():
                fut.set_result(None)
        self._idle.clear()
        self.wake_filler()
        with anyio.move_on_after(self.config.grace_period, shield=True) as self._grace:
            while self._busy and not self._hurried:
                self._all_idle = anyio.Event()
                await self._all_idle.wait()
        if self._busy:
            why = "at once (asked again to stop)" if self._hurried else "after the grace period"
            log.warning("%s: cancelling %d handlers %s", self, self._busy, why)
        workers.cancel()
        self.end_maintenance()

    def _refused(self, exc: PermissionDenied) -> PermissionDenied:
        """``exc`` naming the key fetched from (a blocking read's NOPERM does not)."""
        if self.key in str(exc):
            return exc
        return PermissionDenied(
            f"{self}: {exc} (fetching from {self.key!r}: the ACL user needs ~{self.key} and"
            f" the commands of a {self.kind}; docs/security.md lists the rules of each feature)"
        )

    async def fetch(self) -> None:
        """Run ``fetch_loop``, connecting again when the connection is lost or the slot
        moved (to the new owner). An error reply is logged once and retried with backoff (a
        fetch must not kill the worker); a refused login or NOPERM fails at once."""
        refused = Backoff(f"{self}: Redis refuses the fetch", None, where="Redis")
        moving = Backoff(f"{self}: the cluster", None, where="the slot", cap=1.0)
        if self.connector.fails_over:  # a lost node is soon replaced: look again soon
            self.backoff.cap = 1.0
        while not self.stopping:
            try:
                if not self._connected:
                    await self.connect()
                    self._connected = True
                    self.backoff.ok()
                    refused.ok()
                    moving.ok()
                await self.fetch_loop()
                await self.hold()
            except AuthError:  # no reconnect cures a refusal
                raise
            except PermissionDenied as exc:
                raise self._refused(exc) from None
            except REDIS_ERRORS as exc:
                self._connected = False
                if self.stopping:
                    break
                self.stats.reconnects += 1
                await self.link.close()
                if not isinstance(exc, ReplyError):
                    await self.backoff.wait(exc)
                elif self.connector.follow(exc):  # MOVED: at once; TRYAGAIN...: soon
                    if exc.code != "MOVED":
                        await moving.wait(exc)
                elif self.recoverable(exc):
                    # the stream vanished (deleted, its slot moved): a cluster's resharding
                    level = logging.INFO if self.connector.cluster else logging.WARNING
                    log.log(level, "%s: %s; setting up again", self, exc)
                    await anyio.sleep(0.1)
                else:
                    await refused.wait(exc)

    # -- dispatch -------------------------------------------------------------------------

    def feed(self, items: Iterable[Item]) -> None:
        """Queue items for the workers and wake as many idle workers as needed."""
        dq = self._dq
        before = len(dq)
        if not self.asked:  # one byte search per fetch until a message asks for a result
            items = self.asking(items)
        dq.extend(items)
        if self.options.batch is not None:
            self.fed(before)
            return
        wake = len(dq) - before
        idle = self._idle
        while wake and idle:
            fut = idle.pop()
            if not fut.done():
                fut.set_result(None)
                wake -= 1

    @property
    def backlog(self) -> int:
        """Messages held here: queued locally or in a handler."""
        return len(self._dq) + self._busy

    def handled(self, item: Item) -> None:
        """``done``, logged at DEBUG (``--log-level DEBUG``: each message's verdict)."""
        self.done(item)
        log.debug("%s: message %s handled", self, self.message(item, None).id)
