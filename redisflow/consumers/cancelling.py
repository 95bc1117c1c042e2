"""Cancelled messages, on the consumer side (a base class of ``base.Consumer``): the worker
loop of a single-message handler (``_work``), which can cancel the handler it runs, and the
marks of the source (``features/cancels.py``) it checks messages against.

A worker learns about cancellations without a round trip per message: each fetch reads the
version of the source's marks in its own round trip (a ``GET`` pipelined behind it), and the
marks are reloaded only when it changed (``cancels_seen``), before the fetched messages are
handed to the workers; while handlers run, the version is also read every ``POLL`` seconds
(``watch_cancels``). With no mark, a message costs one attribute test and two stores. A
message whose id is marked is not run (checked when a worker takes it, and before a batch
is called); a running one has its worker task cancelled (``task.cancel``, then
``uncancel``), unless its handler is inside ``msg.shield()``: then when the shield ends.
Every cancelled message, waiting or running, ends in ``settle_cancelled``: acknowledged
(never retried, never dead-lettered), counted and tracked as ``cancelled``.
docs/design.md, "Cancellation".
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio

from ..connection import REDIS_ERRORS
from ..errors import Skip
from ..features.cancels import POLL, Cancels
from ..features.results import ASKS

if TYPE_CHECKING:
    from ..config import HandlerOptions
    from ..features.results import Results
    from ..features.tracking import Status
    from ..handler import Handler
    from ..keys import Keys
    from ..message import Kind, Message
    from ..middleware import ConsumeNext
    from ..protocol.cancels import Mark
    from .contract import Gate, Stats
    from .verdicts import Verdicts

Item = TypeVar("Item")

log = logging.getLogger("redisflow")


class Running:
    """What one worker of a single-message handler runs: the ``item`` (None between
    handlers), its ``msg`` (None when the handler takes none and has no middleware), the
    ``mark`` that cancels it, and whether its ``task`` was cancelled for it (``signalled``)."""

    __slots__ = ("item", "mark", "msg", "signalled", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.item: Any = None
        self.msg: Message[Any] | None = None
        self.mark: Mark | None = None
        self.signalled = False


class Cancelled(Exception):
    """A message found cancelled: before its handler, or by interrupting it."""

    def __init__(self, mark: Mark, msg: Message[Any] | None) -> None:
        super().__init__(mark.reason)
        self.mark, self.msg = mark, msg


class Cancelling(Generic[Item]):
    """The marks of a consumer's source, and its single-message worker loop."""

    kind: ClassVar[Kind]
    # What ``base.Consumer`` provides.
    options: HandlerOptions
    handler: Handler
    keys: Keys
    stats: Stats
    verdicts: Verdicts[Item]
    gate: Gate | None
    chain: ConsumeNext | None
    invoke: Callable[[Any, Any], Awaitable[Any]]
    cancels: Cancels
    _dq: deque[Item]
    _idle: list[asyncio.Future[None]]
    _busy: int
    _draining: bool
    _unfinished: list[Item]
    _all_idle: anyio.Event
    #: The live marks that apply to this consumer, by message id (replaced, never changed).
    marks: dict[str, Mark]
    _cancel_version: Any
    _running: list[Running]

    if TYPE_CHECKING:

        def decode(self, item: Item) -> Any: ...

        def message(self, item: Item, value: Any) -> Message[Any]: ...

        def done(self, item: Item) -> None: ...

        def handled(self, item: Item) -> None: ...

        @property
        def results(self) -> Results: ...

        def head(self) -> Callable[[Item], bytes]: ...

        asked: bool

        async def reply(self, item: Item, value: Any) -> None: ...

        async def track(
            self, msg: Message[Any], status: Status, error: str | None = None
        ) -> None: ...

        @property
        def backlog(self) -> int: ...

    # -- the marks ------------------------------------------------------------------------

    def holding(self) -> bool:
        """Whether messages are held here (a kind adds those waiting for a local retry):
        while so, ``watch_cancels`` reads the version of the marks."""
        return bool(self.backlog)

    def mark_of(self, item: Item) -> Mark | None:
        """The mark that cancels ``item``, if any (only called when there are marks; an
        item whose id cannot be read is not cancelled: its handler's verdict says why)."""
        try:
            msg_id = self.message(item, None).id
        except Exception:
            return None
        return self.marks.get(msg_id)

    async def cancels_seen(self, version: Any) -> None:
        """After a fetch that read the marks' ``version``: reload them if it changed (an
        error leaves them as they were, for the next fetch or poll to reload)."""
        if version != self._cancel_version:
            try:
                await self.reload_cancels()
            except REDIS_ERRORS as exc:
                log.warning("%s: cannot read the cancelled messages (%r)", self, exc)

    async def refresh_cancels(self) -> None:
        """Read the version of the marks now (a path without a fetch: claims, own pending
        entries), and reload them if it changed."""
        try:
            version = await self.cancels.version(self.keys)
        except REDIS_ERRORS as exc:
            log.warning("%s: cannot read the cancelled messages (%r)", self, exc)
            return
        await self.cancels_seen(version)

    async def reload_cancels(self) -> None:
        """Read the marks, then cancel the running handlers they name."""
        version, marks = await self.cancels.read(self.keys)
        group = self.handler.source.group
        self.marks = {i: m for i, m in marks.items() if m.applies(group)}
        self._cancel_version = version
        self.interrupt_running()

    async def watch_cancels(self) -> None:
        """While messages are held, read the version of the marks every ``POLL`` seconds,
        so that a running handler is cancelled within about that (fetches read it too)."""
        if self.kind == "channel":  # nothing to cancel: check_cancel refuses a channel
            return
        while True:
            await anyio.sleep(POLL)
            if self.holding():
                try:
                    await self.refresh_cancels()
                except Exception:  # a bug here must not stop the handlers: log, go on
                    log.exception("%s: reading the cancelled messages failed", self)

    def interrupt_running(self) -> None:
        """Cancel the handlers that run a marked message (when its shield ends, for one in
        ``msg.shield()``); ``msg.cancelled`` says why from now on."""
        if not self.marks:
            return
        for now in self._running:
            item = now.item
            if item is None or now.mark is not None or now.task is None:
                continue
            mark = self.mark_of(item)
            if mark is None:
                continue
            msg = now.msg
            if msg is not None:
                msg.cancelled = mark.reason
                if msg.defer_cancel(_requester(now, mark)):
                    continue
            if self.handler.threaded:  # a thread cannot be stopped: settled when it returns
                now.mark = mark
                continue
            now.mark, now.signalled = mark, True
            now.task.cancel(f"message cancelled: {mark.reason}")

    async def settle_cancelled(
        self, item: Item, msg: Message[Any] | None, mark: Mark
    ) -> None:  # fmt: skip
        """Where every cancelled message ends, waiting or running: acknowledged (it is not
        retried, nor dead-lettered), counted (``cancelled``), logged, and tracked as
        ``cancelled`` with the reason. The one hook for what else a cancellation means (a
        result or reply saying so)."""
        self.stats.cancelled += 1
        self.done(item)
        msg = msg or self.message(item, None)
        msg.cancelled = mark.reason
        log.info("%s: message %s cancelled (%s)", self, msg.id, mark.reason)
        try:  # its waiters raise RemoteError("cancelled")
            await self.results.failed(msg, "cancelled", mark.reason, self.options.result_ttl)
        except REDIS_ERRORS as exc:
            log.warning("cancel of %s not recorded for its waiters: %r", msg.id, exc)
        await self.track(msg, "cancelled", mark.reason)

    async def drop_cancelled(self, items: list[Item]) -> list[Item]:
        """``items`` less the cancelled ones, which are settled (a batch's members are
        checked before the call; a running batch is not interrupted)."""
        kept = []
        for item in items:
            mark = self.mark_of(item)
            if mark is None:
                kept.append(item)
            else:
                await self.settle_cancelled(item, None, mark)
        return kept

    # -- the worker loop ------------------------------------------------------------------

    async def _work(self) -> None:  # noqa: C901 - the hot path, inlined on purpose
        dq = self._dq
        idle = self._idle
        loop = asyncio.get_running_loop()
        invoke = self.invoke
        wants_message = self.handler.wants_message
        decode = self.decode
        timeout = self.options.timeout
        chain = self.chain
        gate = self.gate
        done = self.handled if log.isEnabledFor(logging.DEBUG) else self.done
        head, keep_all = self.head(), self.options.result_ttl is not None
        now = Running(asyncio.current_task())
        self._running.append(now)
        while not self._draining:
            if not dq:
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            item = dq.popleft()
            # partitions of one handler share its concurrency
            if gate is not None and not gate.take():
                await self._enter(gate, item)
            self._busy += 1
            try:
                try:
                    if self.marks and (mark := self.mark_of(item)) is not None:
                        raise Cancelled(mark, None)
                    value = decode(item)
                    now.item = item
                    try:
                        if chain is not None:
                            now.msg = self.message(item, value)
                            result = await chain(now.msg)
                        else:
                            msg = now.msg = self.message(item, value) if wants_message else None
                            if timeout is None:
                                result = await invoke(value, msg)
                            else:
                                with anyio.fail_after(timeout):
                                    result = await invoke(value, msg)
                    except BaseException:  # cancelled, or what the handler made of it
                        if now.mark is None:  # not for a mark: a stop, or a failure
                            raise
                    finally:
                        now.item = None
                    if now.mark is not None:
                        raise self._interrupted(now)
                    if self.asked and (keep_all or ASKS in head(item)):  # before the ack
                        await self.reply(item, result)
                except Skip:
                    self.stats.skipped += 1
                    self.done(item)
                except Cancelled as cancelled:
                    await self.settle_cancelled(item, cancelled.msg, cancelled.mark)
                except Exception as exc:
                    await self.verdicts.failed(item, exc)
                else:
                    self.stats.processed += 1
                    done(item)
            except BaseException:
                self._unfinished.append(item)
                raise
            finally:
                self._busy -= 1
                if gate is not None:
                    gate.release()
                if not self._busy and self._draining:
                    self._all_idle.set()

    def _interrupted(self, now: Running) -> Cancelled:
        """The handler of ``now`` was cancelled (or its shield ended after a cancel): the
        task's cancellation is taken back, and the message settles as cancelled."""
        mark, msg = now.mark, now.msg
        assert mark is not None
        if now.signalled and now.task is not None:
            now.task.uncancel()
        now.mark, now.msg, now.signalled = None, None, False
        return Cancelled(mark, msg)

    async def _enter(self, gate: Gate, item: Item) -> None:
        try:
            await gate.wait()
        except BaseException:  # never started: handed back as unstarted
            self._dq.appendleft(item)
            raise


def _requester(now: Running, mark: Mark) -> Callable[[], None]:
    """What a shield calls when it ends on a message cancelled meanwhile."""

    def request() -> None:
        if now.mark is None:
            now.mark = mark

    return request
