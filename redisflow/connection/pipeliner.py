"""Auto-pipelining: commands issued concurrently to one server share round trips.

Calls queue up; a flush task writes everything queued so far on one of its own links and
hands each caller its own reply or its own error. A lone call costs one round trip; a
thousand concurrent calls cost a few. Replies are raw (RESP2).

Failures: a round trip without an answer within ``timeout`` counts as a lost connection (one
watchdog timer per pipeliner checks the round trips in flight: a timer per round trip,
``asyncio.timeout``, cost ~22k CPU instructions per lone call, +11% on one-by-one sends).
Calls caught by a lost connection (or a server that cannot serve: ``READONLY``,
``LOADING``) are sent again once it is back, for up to ``retry_for`` seconds, then fail
with ``ConnectionLost``. A reply lost in flight may thus repeat a command: at-least-once
(docs/design.md, "Errors"). An authentication or permission error fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConnectionLost, PermissionDenied, ReplicationError, ReplyError
from .link import LOST_CODES, Link, denied, pack

#: Replica acknowledgement a write asks for: replicas, timeout ms, and the AOF fsync too.
Wait = tuple[int, int, bool]
#: Commands sent back to back, the future of their replies, whether error replies are
#: returned as values (``each``) rather than raised, and the acknowledgement they need.
Unit = tuple[Sequence[Sequence[Any]], "asyncio.Future[list[Any]]", bool, "Wait | None"]


class Pipeliner:
    """Auto-pipelined commands to one server, over ``links`` connections of its own."""

    def __init__(
        self,
        make_link: Callable[[], Link],
        *,
        links: int = 2,
        batch: int = 2000,
        retry_for: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.batch, self.retry_for, self.timeout = batch, retry_for, timeout
        self._idle: list[Link] = [make_link() for _ in range(links)]
        self._queue: list[Unit] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._busy: dict[Link, float] = {}  # link -> when its round trip was written
        self._watch: asyncio.TimerHandle | None = None
        self.closed = False

    async def __call__(self, *args: Any) -> Any:
        """Send one command; its reply (an error reply is raised)."""
        return (await self._submit((args,)))[0]

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands back to back, in order; their replies. The first error
        reply among them is raised (after all have run)."""
        return await self._submit(commands)

    def waiting(self, wait: Wait) -> Waiting:
        """This pipeliner, with every call acknowledged by ``wait`` replicas."""
        return Waiting(self, wait)

    def submit(
        self, commands: Sequence[Sequence[Any]], raw: bool = False, wait: Wait | None = None
    ) -> asyncio.Future[list[Any]]:
        """Queue ``commands``; the future of their replies (``wait``: not before that many
        replicas acknowledged them, else ``ReplicationError``)."""
        return self._submit(commands, raw, wait)

    def _submit(
        self, commands: Sequence[Sequence[Any]], raw: bool = False, wait: Wait | None = None
    ) -> asyncio.Future[list[Any]]:
        if self.closed:
            raise ConnectionLost("the flow's connections are closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((commands, fut, raw, wait))
        if self._idle and len(self._queue) == 1:
            self._start(loop)
        return fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._flush(self._idle.pop()))
        self._flushers.add(task)
        task.add_done_callback(self._flushers.discard)

    async def _flush(self, link: Link) -> None:
        try:
            while self._queue:
                take, size = 0, 0
                while take < len(self._queue) and size < self.batch:
                    size += len(self._queue[take][0])
                    take += 1
                units, self._queue = self._queue[:take], self._queue[take:]
                await self._send_units(link, units)
        finally:
            self._idle.append(link)
            if self._queue and not self.closed:  # queued while we were handing back
                self._start(asyncio.get_running_loop())

    async def _send_units(self, link: Link, units: list[Unit]) -> None:
        """One round trip for ``units``; on a lost connection, reconnect and send the
        unanswered ones again for up to ``retry_for`` seconds, then fail them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.05
        while True:
            self._busy[link] = loop.time()
            if self._watch is None:
                self._watch = loop.call_later(self.timeout, self._check)
            try:
                units = await self._round_trip(link, units)
                if not units:
                    return
                raise ConnectionLost(f"{link.endpoint}: cannot serve writes now")
            except (ConnectionLost, OSError) as exc:
                await link.close()
                units = [unit for unit in units if not unit[1].done()]
                if not units or loop.time() + delay > deadline:
                    failure: BaseException = exc
                else:
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(0.5, delay * 2)
                    continue
            except Exception as exc:  # e.g. the credentials were refused
                await link.close()
                failure = exc
            finally:
                self._busy.pop(link, None)
            for _, fut, _, _ in units:
                if not fut.done():
                    fut.set_exception(failure)
            return

    def _check(self) -> None:
        """Drop every link whose round trip has waited ``timeout`` for its replies (its
        callers are retried or failed as on any lost connection); look again while round
        trips are in flight."""
        self._watch = None
        if self.closed or not self._busy:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link, since in list(self._busy.items()):
            if now - since >= self.timeout:
                del self._busy[link]
                link.abort(f"no reply within {self.timeout:g}s")
        if self._busy:
            due = min(self._busy.values()) + self.timeout
            self._watch = loop.call_at(max(due, now + 0.01), self._check)

    @staticmethod
    async def _round_trip(link: Link, units: list[Unit]) -> list[Unit]:
        """Write ``units`` and hand out their replies; the units to send again (their
        server could not serve them: ``READONLY``, ``LOADING``). Units that ask for replica
        acknowledgement get their replies only after one ``WAIT`` (or ``WAITAOF``) written
        behind them all: it covers every write made on the connection so far."""
        packed, sent = _pack_units(units)
        if not sent:
            return []
        wait = _strictest([unit[3] for unit in sent if unit[3] is not None])
        if wait is not None:
            packed.append(pack([_wait_command(wait)]))
        if not link.connected:
            await link.open()
        await link.write(b"".join(packed))
        again: list[Unit] = []
        waiting: list[tuple[Unit, list[Any]]] = []
        for unit in sent:
            replies = [await link.reply() for _ in unit[0]]
            if unit[3] is not None:
                waiting.append((unit, replies))
            elif not _settle(unit, replies):
                again.append(unit)
        if wait is not None:
            acked = _acked(await link.reply(), wait)
            for unit, replies in waiting:
                assert unit[3] is not None
                short = isinstance(acked, ReplyError) or acked < unit[3][0]
                if short and not unit[1].done():
                    unit[1].set_exception(_short(acked, unit[3]))
                elif not _settle(unit, replies):
                    again.append(unit)
        return again

    def forsake(self) -> None:
        """Drop everything without the event loop it lives on, which has ended."""
        self.closed = True
        for link in [*self._idle, *self._busy]:
            link.forsake()
        self._queue.clear()

    async def aclose(self) -> None:
        """Stop the flushers and close the links; waiting callers get ConnectionLost."""
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
        for task in list(self._flushers):
            task.cancel()
        for task in list(self._flushers):
            with contextlib.suppress(BaseException):
                await task
        for _, fut, _, _ in self._queue:
            if not fut.done():
                fut.set_exception(ConnectionLost("the flow's connections were closed"))
        self._queue.clear()
        for link in self._idle:
            await link.close()


def _settle(unit: Unit, replies: list[Any]) -> bool:
    """Hand ``replies`` to the caller of ``unit``; False if it must be sent again (its
    server could not serve it: ``READONLY``, ``LOADING``)."""
    commands, fut, raw, _ = unit
    if fut.done():
        return True
    error = None
    for reply in replies:  # a loop, not next(genexpr): this runs once per call
        if isinstance(reply, ReplyError):
            error = reply
            break
    if error is None:
        fut.set_result(replies)
    elif error.code in LOST_CODES:
        return False
    elif raw:
        fut.set_result(replies)
    elif isinstance(error, PermissionDenied):  # say what was refused, and the rule
        fut.set_exception(denied(error, commands[replies.index(error)]))
    else:
        fut.set_exception(error)
    return True


def _pack_units(units: list[Unit]) -> tuple[list[bytes], list[Unit]]:
    """The units packed, and those sent: a caller's bad argument fails that caller only."""
    try:  # all at once, the common case
        return [pack([command for unit in units for command in unit[0]])], units
    except TypeError:
        pass
    packed: list[bytes] = []
    sent: list[Unit] = []
    for unit in units:
        try:
            packed.append(pack(unit[0]))
            sent.append(unit)
        except TypeError as exc:
            if not unit[1].done():
                unit[1].set_exception(exc)
    return packed, sent


def _strictest(found: list[Wait]) -> Wait | None:
    if not found:
        return None
    return (max(w[0] for w in found), max(w[1] for w in found), any(w[2] for w in found))


def _wait_command(wait: Wait) -> list[Any]:
    replicas, ms, aof = wait
    return ["WAITAOF", 1, replicas, ms] if aof else ["WAIT", replicas, ms]


def _acked(reply: Any, wait: Wait) -> int | ReplyError:
    """How many replicas acknowledged, or the server's refusal of the WAIT."""
    if isinstance(reply, ReplyError):
        return reply
    if wait[2]:  # WAITAOF: [local fsynced (0/1), replicas fsynced]
        return int(reply[1]) if int(reply[0]) >= 1 else 0
    return int(reply)


def _short(acked: int | ReplyError, wait: Wait) -> ReplicationError:
    command = "WAITAOF" if wait[2] else "WAIT"
    if isinstance(acked, ReplyError):  # WAITAOF before 7.2, or without appendonly
        return ReplicationError(
            f"written on the primary, but the server refused {command} ({acked}): the"
            " message may exist, and may be lost if the primary fails now"
        )
    what = "fsynced" if wait[2] else "acknowledged"
    return ReplicationError(
        f"written on the primary, but only {acked} of {wait[0]} replicas {what} it within"
        f" {wait[1]} ms: the message may exist, and may be lost if the primary fails now"
    )


class Waiting:
    """A ``Pipeliner`` (or a cluster ``Router``) whose calls need replica acknowledgement:
    one ``WAIT`` per round trip, not per call."""

    def __init__(self, target: Any, wait: Wait) -> None:
        self.target, self.wait = target, wait

    async def __call__(self, *args: Any) -> Any:
        """Send one command; its reply, once acknowledged."""
        return (await self.target.submit((args,), False, self.wait))[0]

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands; their replies, once acknowledged."""
        return list(await self.target.submit(commands, False, self.wait))
