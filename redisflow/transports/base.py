"""What every consumer shares: a fixed pool of worker coroutines fed from a deque, the
verdict on each message (done, retry, dead letter), and the two-phase shutdown.

A transport subclass supplies the Redis side: ``setup`` (ready to receive), ``fetch`` (the
loop that fills the deque until ``stopping``), ``decode``, the settle calls, and ``release``
(hand unfinished messages back). The hot path is ``_work``: no task, lock or context manager
per message; a worker validates just before calling its handler (REDIS-NOTES, "hot path").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskStatus
from pydantic import ValidationError
from redis.exceptions import ResponseError

from ..codec import now_ms
from ..connection import CONNECTION_ERRORS, Backoff, Link
from ..errors import DecodeError, Reject, Retry
from ..idempotency import Defer, Idempotency, Skip
from ..keys import Keys
from ..ratelimit import Limiter
from ..tracking import Status, Tracker

if TYPE_CHECKING:
    from ..app import Settings
    from ..handler import Handler
    from ..message import Message

log = logging.getLogger("redisflow")

#: What the fetch loop may survive; a ``ResponseError`` only if ``recoverable`` says so.
RECONNECTABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, ResponseError)


@dataclass(slots=True)
class Stats:
    """Counters of one consumer since it started."""

    processed: int = 0
    retried: int = 0
    dead: int = 0
    dropped: int = 0
    reconnects: int = 0
    skipped: int = 0  # duplicates of an idempotency key already handled
    deferred: int = 0  # delivered again later by a rate limit or a running duplicate

    def __str__(self) -> str:
        return (
            f"processed={self.processed} retried={self.retried} dead={self.dead}"
            f" dropped={self.dropped} reconnects={self.reconnects}"
            f" skipped={self.skipped} deferred={self.deferred}"
        )


STAT_FIELDS = ("processed", "retried", "dead", "dropped", "reconnects", "skipped", "deferred")


@dataclass(slots=True)
class Failure:
    """Why a message failed, as written to the dead letters."""

    error: str
    where: str = ""
    decode: bool = False
    retry_delay: float | None = None
    reject: bool = False
    defer: bool = False  # not a failure: deliver again later without counting an attempt
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """Describe ``exc``: its type and text, and the last frame of its traceback."""
        text = f"{type(exc).__name__}: {exc}"
        frames = traceback.extract_tb(exc.__traceback__)
        where = ""
        if frames:
            last = frames[-1]
            where = f"{last.filename}:{last.lineno} in {last.name}"
        if isinstance(exc, DecodeError):
            return cls(str(exc), "", decode=True)
        if isinstance(exc, Reject):
            return cls(f"rejected: {exc.reason}", where, reject=True)
        if isinstance(exc, Retry):
            return cls(f"retry requested: {exc.reason}", where, retry_delay=exc.delay)
        return cls(text, where)


class Consumer:
    """The runtime of one handler: fetch loop, worker pool, verdicts, shutdown."""

    def __init__(self, handler: Handler, settings: Settings) -> None:
        self.handler = handler
        self.options = handler.options
        self.invoke = handler.bind(settings.resources)  # ConfigError if a resource is missing
        self.settings = settings
        self.redis = settings.connector.client
        self.keys = Keys(settings.prefix, handler.source.name)
        self.stats = Stats()
        self._reported = Stats()  # what ``report`` has sent to Redis
        self._reported_once = False
        self.stopping = False
        self.backoff = Backoff(f"{handler.source} [{handler.name}]", settings.give_up_after)
        self._dq: deque[Any] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._busy = 0
        self._draining = False
        self._unfinished: list[Any] = []
        self._all_idle = anyio.Event()
        self._connected = False
        self._blocked = False  # a request that may block in Redis is outstanding on ``link``
        self.link: Link = settings.connector.link()  # opened by fetching transports
        send = settings.connector.send
        options = self.options
        track = settings.track if options.track is None else options.track
        self.tracker = Tracker(send, settings.prefix, settings.track_ttl) if track else None
        self.limiter = (
            Limiter(self.redis, self.keys, options.rate_limit) if options.rate_limit else None
        )
        self.idempotency = None
        if options.idempotency_key is not None:
            claim = max(settings.lease, options.timeout or 0) * 2
            self.idempotency = Idempotency(
                send, self.keys, options.idempotency_key, options.idempotency_ttl, claim
            )
        self.observe: Callable[[float], object] | None = None  # set by Metrics
        self.guarded = bool(self.tracker or self.limiter or self.idempotency)

    # -- transport hooks -------------------------------------------------------------------

    async def connect(self) -> None:
        """(Re)open ``link`` and prepare the source (load scripts, create the group...)."""

    async def setup(self) -> None:
        """Get ready to receive; errors reach ``Flow.start``."""
        await self.connect()
        self._connected = True

    async def fetch_loop(self) -> None:
        """Fill the deque with ``feed`` until ``stopping`` is set."""
        raise NotImplementedError

    def recoverable(self, exc: ResponseError) -> bool:
        """Whether a Redis error reply in the fetch loop is cured by connecting again."""
        return False

    async def fetch(self) -> None:
        """Run ``fetch_loop``, reconnecting with backoff when the connection is lost."""
        try:
            while not self.stopping:
                try:
                    if not self._connected:
                        await self.connect()
                        self._connected = True
                        self.backoff.ok()
                    await self.fetch_loop()
                except RECONNECTABLE as exc:
                    lost = isinstance(exc, CONNECTION_ERRORS)
                    if not lost and not self.recoverable(exc):  # type: ignore[arg-type]
                        raise
                    self._connected = False
                    if self.stopping:
                        break
                    self.stats.reconnects += 1
                    await self.link.close()
                    if lost:
                        await self.backoff.wait(exc)
                    else:
                        log.warning("%s: %s; setting up again", self, exc)
                        await anyio.sleep(0.1)
        finally:
            with anyio.CancelScope(shield=True):
                await self.link.close()

    async def idle(self) -> bool:
        """Whether nothing is left to do: no message held here or waiting in Redis (due
        later included). ``Flow.wait_idle`` polls it; transports add their Redis side."""
        return self.backlog == 0

    async def maintain(self) -> None:
        """Periodic housekeeping that runs until the consumer has released everything."""
        await anyio.sleep_forever()

    async def _report(self) -> None:
        """Publish this consumer's counters and in-flight count to Redis every few seconds,
        for ``redisflow stats`` (in other processes) to read."""
        while True:
            await anyio.sleep(self.settings.report_interval)
            try:
                await self.report()
            except CONNECTION_ERRORS:
                pass

    async def report(self, final: bool = False) -> None:
        """Send the counter deltas since the last report and the in-flight gauge (``final``:
        remove the gauge, this worker is leaving)."""
        commands: list[tuple[Any, ...]] = []
        name = self.handler.name
        for counter in STAT_FIELDS:
            delta = getattr(self.stats, counter) - getattr(self._reported, counter)
            if delta or not self._reported_once:  # zeros once: a quiet handler is listed
                commands.append(("HINCRBY", self.keys.stats, f"{name}:{counter}", delta))
                setattr(self._reported, counter, getattr(self.stats, counter))
        self._reported_once = True
        field = f"{name}:{self.settings.worker_id}"
        if final:
            commands.append(("HDEL", self.keys.inflight, field))
        else:
            commands.append(("HSET", self.keys.inflight, field, f"{self.backlog}:{now_ms()}"))
        await self.settings.connector.send.many(*commands)

    def interrupt(self) -> None:
        """Wake a fetch that blocks in Redis, so that it sees ``stopping``."""
        self.settings.spawn(self._unblock)

    async def _unblock(self) -> None:
        # Repeat: CLIENT UNBLOCK may reach Redis before the blocking command it should end.
        # Never cancel a blocked pop instead: the popped item would be lost (REDIS-NOTES).
        while self._blocked:
            client_id = self.link.client_id
            if client_id is not None:
                try:
                    await self.redis.client_unblock(client_id)
                except CONNECTION_ERRORS:
                    return
            await anyio.sleep(0.05)

    def decode(self, item: Any) -> Any:
        """Validate an item's payload; raise DecodeError if it cannot be."""
        raise NotImplementedError

    def message(self, item: Any, value: Any) -> Message[Any]:
        """The Message envelope of an item."""
        raise NotImplementedError

    def attempt(self, item: Any) -> int:
        """The delivery attempt of an item, 1 on first delivery."""
        raise NotImplementedError

    def raw(self, item: Any) -> bytes:
        """The payload bytes of an item, for the dead letters."""
        raise NotImplementedError

    def done(self, item: Any) -> None:
        """Record that an item is settled (its ack is sent in a later batch)."""

    async def retry(self, item: Any, delay: float, count: bool = True) -> None:
        """Deliver the item again after ``delay`` seconds, then settle it; ``count=False``
        keeps its attempt number (a deferral, not a failure)."""
        raise NotImplementedError

    async def bury(self, item: Any, fields: dict[Any, Any]) -> None:
        """Write the item to the dead letters, then settle it."""
        raise NotImplementedError

    async def release(self, started: list[Any], unstarted: list[Any]) -> None:
        """Flush acks and hand unfinished items back to Redis (shielded, at the end):
        ``started`` ones were cancelled in their handler, ``unstarted`` ones never ran."""

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Set up, report ready, consume until stopped, drain, release."""
        await self.setup()
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.maintain)
                outer.start_soon(self._report)
                async with anyio.create_task_group() as workers:
                    for _ in range(self.options.concurrency):
                        workers.start_soon(self._work)
                    task_status.started()
                    try:
                        await self.fetch()
                    finally:
                        await self._drain(workers.cancel_scope)
                outer.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                started, unstarted = self._unfinished, list(self._dq)
                self._dq.clear()
                try:
                    with anyio.fail_after(10):
                        await self.release(started, unstarted)
                except Exception as exc:  # the messages stay leased; a peer recovers them
                    left = len(started) + len(unstarted)
                    if left:
                        log.warning("%s: could not hand back %d messages: %r", self, left, exc)
                with contextlib.suppress(Exception), anyio.move_on_after(2):
                    await self.report(final=True)

    def stop(self) -> None:
        """Stop fetching; in-flight handlers go on for the grace period."""
        if not self.stopping:
            self.stopping = True
            self.interrupt()

    async def _drain(self, workers: anyio.CancelScope) -> None:
        self.stopping = True
        self._draining = True
        for fut in self._idle:
            if not fut.done():
                fut.set_result(None)
        self._idle.clear()
        with anyio.move_on_after(self.settings.grace_period, shield=True):
            while self._busy:
                self._all_idle = anyio.Event()
                await self._all_idle.wait()
        if self._busy:
            log.warning("%s: cancelling %d handlers after the grace period", self, self._busy)
        workers.cancel()

    def __str__(self) -> str:
        return f"{self.handler.source} [{self.handler.name}]"

    # -- dispatch -------------------------------------------------------------------------

    def feed(self, items: Iterable[Any]) -> None:
        """Queue items for the workers and wake as many idle workers as needed."""
        dq = self._dq
        before = len(dq)
        dq.extend(items)
        wake = len(dq) - before
        idle = self._idle
        while wake and idle:
            fut = idle.pop()
            if not fut.done():
                fut.set_result(None)
                wake -= 1

    @property
    def backlog(self) -> int:
        """Messages held by this consumer: queued locally or in a handler."""
        return len(self._dq) + self._busy

    async def _work(self) -> None:
        dq = self._dq
        idle = self._idle
        loop = asyncio.get_running_loop()
        invoke = self.invoke
        wants_message = self.handler.wants_message
        decode = self.decode
        timeout = self.options.timeout
        guarded = self.guarded
        while True:
            if not dq or self._draining:
                if self._draining:
                    return
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            item = dq.popleft()
            self._busy += 1
            try:
                try:
                    value = decode(item)
                    if guarded:
                        await self._guarded(item, value)
                    else:
                        msg = self.message(item, value) if wants_message else None
                        if timeout is None:
                            await invoke(value, msg)
                        else:
                            with anyio.fail_after(timeout):
                                await invoke(value, msg)
                except Skip:
                    self.stats.skipped += 1
                    self.done(item)
                except Exception as exc:
                    await self._failed(item, exc)
                else:
                    self.stats.processed += 1
                    self.done(item)
            except BaseException:
                self._unfinished.append(item)
                raise
            finally:
                self._busy -= 1
                if not self._busy and self._draining:
                    self._all_idle.set()

    async def _guarded(self, item: Any, value: Any) -> None:
        """Call the handler with the options that need Redis around it: idempotency, rate
        limit, status tracking (raises Skip or Defer instead of calling it)."""
        msg = self.message(item, value)
        idem, limiter, tracker = self.idempotency, self.limiter, self.tracker
        record = token = ""
        if idem is not None:
            record = idem.record(value)
            token = await idem.claim(record)
        if limiter is not None:
            rate = limiter.rate
            wait = await limiter.try_acquire(str(rate.key(value)) if rate.key else "")
            if wait > 0:
                if idem is not None:
                    await idem.drop(record, token)
                raise Defer(wait, "rate limited")
        if tracker is not None:
            await self._track(msg, "processing")
        began = time.perf_counter()
        try:
            call = self.invoke(value, msg)
            if self.options.timeout is None:
                await call
            else:
                with anyio.fail_after(self.options.timeout):
                    await call
        except Exception:
            if idem is not None:
                await idem.drop(record, token)
            raise
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - began)
        if idem is not None:
            await idem.done(record, token)
        if tracker is not None:
            await self._track(msg, "completed")

    async def _failed(self, item: Any, exc: Exception) -> None:
        if isinstance(exc, Defer):
            await self._settle(item, Failure(str(exc), retry_delay=exc.delay, defer=True), 0, False)
            return
        failure = Failure.of(exc)
        if isinstance(exc, TimeoutError) and self.options.timeout is not None:
            failure.error = f"handler timed out after {self.options.timeout}s"
        attempt = self.attempt(item)
        final = failure.decode or failure.reject or attempt >= self.options.max_attempts
        msg_id = self.message(item, None).id
        if failure.decode:
            log.warning(
                "%s: message %s dead-lettered: %s",
                self,
                msg_id,
                failure.error[:500],
                extra=self._log_fields(msg_id, attempt),
            )
        else:
            log.warning(
                "%s: message %s attempt %d/%d failed: %s",
                self,
                msg_id,
                attempt,
                self.options.max_attempts,
                failure.error,
                exc_info=exc if final and not failure.reject else None,
                extra=self._log_fields(msg_id, attempt),
            )
        await self._settle(item, failure, attempt, final)

    async def _settle(self, item: Any, failure: Failure, attempt: int, final: bool) -> None:
        # A verdict must reach Redis, even while the handler's scope is being cancelled.
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    if failure.defer:
                        await self.retry(item, failure.retry_delay or 0.0, count=False)
                        self.stats.deferred += 1
                        return
                    if final:
                        await self.bury(item, self._dead_fields(item, failure, attempt))
                        self.stats.dead += 1
                    else:
                        await self.retry(item, self._delay(attempt, failure.retry_delay))
                        self.stats.retried += 1
                    break
                except CONNECTION_ERRORS as err:
                    if self.stopping:  # leave it leased: a peer (or our restart) redelivers it
                        log.warning(
                            "%s: verdict not recorded (%r); message stays leased", self, err
                        )
                        self._unfinished.append(item)
                        return
                    await self.backoff.wait(err)
            # After the loop: a status write that fails must not repeat the verdict.
            if self.tracker is not None:
                status: Status = "dead" if final else "failed"
                await self._track(self.message(item, None), status, failure.error)

    async def _track(self, msg: Message[Any], status: Status, error: str | None = None) -> None:
        """Record a status change if this handler is tracked; best effort: a status record
        is never worth failing or repeating the message's own verdict."""
        if self.tracker is not None:
            try:
                await self.tracker.moved(msg, self.handler.name, status, error)
            except Exception as exc:  # lost connection, or a foreign key in the way
                log.warning("%s: status of message %s not recorded: %r", self, msg.id, exc)

    def _log_fields(self, msg_id: str, attempt: int) -> dict[str, Any]:
        """Structured fields of a log record about one message (for JSON log handlers)."""
        return {
            "message_id": msg_id,
            "attempt": attempt,
            "handler": self.handler.name,
            "source": str(self.handler.source),
        }

    def _delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return max(0.0, asked)
        ceiling = min(self.options.retry_max_delay, self.options.retry_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _dead_fields(self, item: Any, failure: Failure, attempt: int) -> dict[Any, Any]:
        msg = self.message(item, None)
        extra = {"headers": orjson.dumps(msg.headers)} if msg.headers else {}
        return {
            **extra,
            "data": self.raw(item),
            "message_id": msg.id,
            "error": failure.error,
            "where": failure.where,
            "attempts": attempt,
            "handler": self.handler.name,
            "source": str(self.handler.source),
            "failed_at": now_ms(),
            **failure.extra,
        }

    async def write_dead(self, fields: dict[Any, Any]) -> None:
        """XADD the dead-letter entry (bounded with an approximate MAXLEN)."""
        await self.redis.xadd(
            self.keys.dead, fields, maxlen=self.settings.dead_maxlen, approximate=True
        )

    def invalid(self, exc: ValidationError | ValueError) -> DecodeError:
        """A DecodeError describing a payload that does not validate."""
        if isinstance(exc, ValidationError):
            return DecodeError(f"invalid payload: {exc}")
        return DecodeError(f"undecodable payload: {exc}")
