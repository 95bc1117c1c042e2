"""Batch handlers (``batch=N``): a base class of ``base.Consumer`` with the worker loop that
takes up to N messages at once, and what decides the verdict of each.

A worker takes a full batch as soon as the deque holds one; with fewer, one worker (the
filler) waits until it does or until ``batch_wait`` has passed since the oldest of them
arrived, and takes what is there; the others stay idle meanwhile, so batches are not split
between workers that wait. The handler gets the payloads that validated; those that did not
are dead-lettered one by one. Its outcome settles each message: a return acks them all,
an exception fails them all (``Retry``, ``Reject``, ``Skip``, ``Defer`` apply to all), and
``BatchFailed`` fails the messages it names and acks the rest. Failures go to the same
``verdicts.py`` as a single message's, so each retried message comes back on its own, with
its own attempt count, in whatever batch it lands next.

With middleware, one chain call per batch: the chain gets a ``MessageBatch`` (its
``messages``, and ``payload`` the list of payloads); see docs/design.md, "Batches".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ..errors import BatchFailed, DecodeError, Skip
from ..message import Message, MessageBatch

if TYPE_CHECKING:
    from ..config import HandlerOptions
    from ..handler import Handler
    from ..middleware import ConsumeNext
    from ..protocol.cancels import Mark
    from .contract import Gate, Stats
    from .verdicts import Verdicts

Item = TypeVar("Item")

log = logging.getLogger("redisflow")


class Batching(Generic[Item]):
    """The worker loop of a batch handler, over the deque and counters of its consumer."""

    # What ``base.Consumer`` provides.
    options: HandlerOptions
    handler: Handler
    stats: Stats
    verdicts: Verdicts[Item]
    gate: Gate | None
    chain: ConsumeNext | None
    stopping: bool
    invoke: Callable[[Any, Any], Awaitable[Any]]
    _dq: deque[Item]
    _idle: list[asyncio.Future[None]]
    _busy: int
    _draining: bool
    _unfinished: list[Item]
    _all_idle: anyio.Event
    #: The worker waiting for its batch to fill (its wake-up), and when the oldest message
    #: in the deque arrived (``time.monotonic``).
    _filler: asyncio.Future[None] | None = None
    _first_at: float = 0.0

    if TYPE_CHECKING:

        def decode(self, item: Item) -> Any: ...

        def message(self, item: Item, value: Any) -> Message[Any]: ...

        def done(self, item: Item) -> None: ...

        async def reply_many(self, items: list[Item]) -> list[tuple[Item, Any]]: ...

        marks: dict[str, Mark]

        async def drop_cancelled(self, items: list[Item]) -> list[Item]: ...

    def done_many(self, items: list[Item]) -> None:
        """``done`` for each of ``items`` (a kind may do it in one go)."""
        for item in items:
            self.done(item)

    def decode_many(
        self, items: list[Item]
    ) -> tuple[list[Any], list[Item], list[tuple[Item, BaseException]]]:
        """``decode`` for each of ``items``: the payloads, the items they belong to, and the
        items that did not decode with their ``DecodeError`` (a kind may inline it)."""
        values: list[Any] = []
        good: list[Item] = []
        bad: list[tuple[Item, BaseException]] = []
        decode = self.decode
        for item in items:
            try:
                values.append(decode(item))
                good.append(item)
            except DecodeError as exc:
                bad.append((item, exc))
        return values, good, bad

    def fed(self, before: int) -> None:
        """Wake workers after ``feed`` added messages to a deque that held ``before``: the
        filler once a batch is full, else one idle worker per full batch (at least one)."""
        dq, size = self._dq, self.options.batch or 1
        if not before:
            self._first_at = time.monotonic()
        wake = max(1, len(dq) // size)
        filler = self._filler
        if filler is not None:
            wake -= 1
            if len(dq) >= size and not filler.done():
                filler.set_result(None)
        idle = self._idle
        while wake > 0 and idle:
            fut = idle.pop()
            if not fut.done():
                fut.set_result(None)
                wake -= 1

    def wake_filler(self) -> None:
        """End the wait of the worker filling a batch (at stop)."""
        filler = self._filler
        if filler is not None and not filler.done():
            filler.set_result(None)

    async def _work_batches(self) -> None:
        dq, idle = self._dq, self._idle
        loop = asyncio.get_running_loop()
        size = self.options.batch or 1
        wait = self.options.fill_wait
        while not self._draining:
            if not dq or self._filler is not None:  # nothing yet, or another one fills
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            if len(dq) < size and not self.stopping:
                left = self._first_at + wait - time.monotonic()
                if left > 0:
                    await self._fill(loop, left)
                    continue
            items = [dq.popleft() for _ in range(min(size, len(dq)))]
            if dq:  # the rest is another worker's batch (its oldest came when ours did)
                while idle:
                    fut = idle.pop()
                    if not fut.done():
                        fut.set_result(None)
                        break
            if self.marks:  # cancelled members are settled, never handed to the handler
                items = await self.drop_cancelled(items)
                if not items:
                    continue
            await self._run_batch(items)

    async def _fill(self, loop: asyncio.AbstractEventLoop, left: float) -> None:
        """Wait until the deque holds a full batch, ``left`` seconds pass, or a stop."""
        fut = self._filler = loop.create_future()
        timer = loop.call_later(left, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._filler = None

    async def _run_batch(self, items: list[Item]) -> None:
        gate = self.gate
        if gate is not None and not gate.take():
            try:
                await gate.wait()
            except BaseException:  # never started: handed back as unstarted
                self._dq.extendleft(reversed(items))
                raise
        count = len(items)
        self._busy += count
        settling = False
        try:
            values, good, bad = self.decode_many(items)
            outcome: BaseException | None = None
            failed: list[tuple[Item, Any]] = []
            if good:
                try:
                    failed = await self._call_batch(good, values)
                except Exception as exc:
                    outcome = exc
            settling = True  # from here on each message is settled, shielded
            await self._settle_batch(good, outcome, failed, bad)
        except BaseException:
            if not settling:
                self._unfinished.extend(items)
            raise
        finally:
            self._busy -= count
            if gate is not None:
                gate.release()
            if not self._busy and self._draining:
                self._all_idle.set()

    async def _call_batch(self, items: list[Item], values: list[Any]) -> list[tuple[Item, Any]]:
        """Run the handler (through its chain) on ``items``; the messages its
        ``BatchFailed`` names, with their exceptions ([] when it returned)."""
        message = self.message
        chain = self.chain
        if chain is None:
            msgs = (
                [message(item, value) for item, value in zip(items, values, strict=True)]
                if self.handler.wants_message
                else None
            )
            try:
                timeout = self.options.timeout
                if timeout is None:
                    await self.invoke(values, msgs)
                else:
                    with anyio.fail_after(timeout):
                        await self.invoke(values, msgs)
            except BatchFailed as exc:
                return [(items[i], failure) for i, failure in _checked(exc, len(items))]
            return []
        messages = [message(item, value) for item, value in zip(items, values, strict=True)]
        batch = MessageBatch.of(messages, self.handler.source)
        try:
            await chain(batch)
        except BatchFailed as exc:
            if not exc.resolved:  # raised by a middleware, by index into the whole batch
                exc.resolved = [(messages[i], failure) for i, failure in _checked(exc, len(items))]
            of_item = {id(msg): item for msg, item in zip(messages, items, strict=True)}
            return [(of_item[id(m)], e) for m, e in exc.resolved if id(m) in of_item]
        return []

    async def call_batch(self, batch: MessageBatch[Any]) -> Any:
        """The innermost step of a batch handler's consume chain: the handler, within its
        ``timeout``, with a ``BatchFailed`` resolved to the batch's messages."""
        timeout = self.options.timeout
        payloads, messages = batch.payload or [], batch.messages
        try:
            if timeout is None:
                return await self.invoke(payloads, messages)
            with anyio.fail_after(timeout):
                return await self.invoke(payloads, messages)
        except BatchFailed as exc:
            if not exc.resolved:
                exc.resolved = [(messages[i], e) for i, e in _checked(exc, len(messages))]
            raise

    async def _settle_batch(
        self,
        items: list[Item],
        outcome: BaseException | None,
        failed: list[tuple[Item, Any]],
        bad: list[tuple[Item, BaseException]],
    ) -> None:
        """Ack what succeeded; hand every other message to the verdicts."""
        stats = self.stats
        failures = list(bad)
        if outcome is None:
            ok = items
            if failed:
                named = {id(item) for item, _ in failed}
                ok = [item for item in items if id(item) not in named]
                skipped = [item for item, exc in failed if isinstance(exc, Skip)]
                failures += [(item, exc) for item, exc in failed if not isinstance(exc, Skip)]
                stats.skipped += len(skipped)
                self.done_many(skipped)
            unwritten = await self.reply_many(ok)  # results asked for: null each
            if unwritten:
                named = {id(item) for item, _ in unwritten}
                ok = [item for item in ok if id(item) not in named]
                failures += unwritten
            stats.processed += len(ok)
            self.done_many(ok)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: batch of %d handled, %d failed", self, len(ok), len(failures))
        elif isinstance(outcome, Skip):
            stats.skipped += len(items)
            self.done_many(items)
        else:
            failures += [(item, outcome) for item in items]
        if failures:
            await self.verdicts.failed_many(failures, len(items) + len(bad))


def _checked(exc: BatchFailed, size: int) -> list[tuple[int, Any]]:
    """The (index, exception) pairs of a handler's ``BatchFailed``; a key that is no index
    of the batch fails the whole batch (a bug in the handler, said as such)."""
    for index in exc.failures:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise TypeError(
                f"BatchFailed names {index!r}, which is no index of this batch of {size}"
            ) from None
    return [
        (i, e if isinstance(e, BaseException) else TypeError(repr(e)))
        for i, e in exc.failures.items()
    ]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
