"""What happens to a message whose handler failed: retried later, or dead-lettered.

``Verdicts.failed`` turns an exception into a ``Failure`` and decides: a ``Defer`` (rate
limit, a duplicate running elsewhere) comes back later without counting an attempt; a
payload that cannot be decoded, a ``Reject`` or the last attempt goes to the dead letters;
anything else is retried after ``retry_delay * 2**(attempt-1)`` (jittered, capped).
``settle`` records the verdict in Redis, shielded from cancellation, and keeps trying
through an outage or a full Redis (logged once); only a stop gives up, leaving the message
leased for a peer (or the next start) to deliver again.
"""

from __future__ import annotations

import logging
import random
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import anyio
from pydantic import ValidationError

from ..connection import REDIS_ERRORS, Backoff
from ..errors import DecodeError, Defer, HandlerSignal, Reject, ReplyError, Retry, Skip
from ..protocol.records import dead_letter

if TYPE_CHECKING:
    from ..features.tracking import Status
    from .contract import Settling

Item = TypeVar("Item")
#: What becomes of a handler attempt: ``outcome`` names it for an exception.
Outcome = Literal["ok", "retry", "dead-lettered", "rejected", "skipped", "deferred"]

log = logging.getLogger("redisflow")


@dataclass(slots=True)
class Failure:
    """Why a message failed, as written to the dead letters."""

    error: str
    where: str = ""
    decode: bool = False
    retry_delay: float | None = None
    reject: bool = False
    defer: bool = False  # not a failure: deliver again later without counting an attempt
    summary: str = ""  # one line for the log, when ``error`` is longer (a validation error)

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """Describe ``exc``: its type and text, and the last frame of its traceback."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = ""
        if frames:
            last = frames[-1]
            where = f"{last.filename}:{last.lineno} in {last.name}"
        if isinstance(exc, DecodeError):
            return cls(str(exc), "", decode=True, summary=exc.summary)
        if isinstance(exc, Reject):
            return cls(f"rejected: {exc.reason}", where, reject=True)
        if isinstance(exc, Retry):
            return cls(f"retry requested: {exc.reason}", where, retry_delay=exc.delay)
        if isinstance(exc, Defer):
            return cls(str(exc), retry_delay=exc.delay, defer=True)
        return cls(f"{type(exc).__name__}: {exc}", where)


@dataclass(slots=True)
class Verdicts(Generic[Item]):
    """The verdicts of one consumer."""

    consumer: Settling[Item]
    _refused: Backoff | None = field(default=None)

    async def failed(self, item: Item, exc: BaseException) -> None:
        """Decide what happens to ``item`` after ``exc``, and record it."""
        failure, attempt, final = self.decide(item, exc)
        self._log(item, failure, attempt, final, exc)
        await self.settle(item, failure, attempt, final)

    async def failed_many(self, failures: list[tuple[Item, BaseException]], size: int) -> None:
        """``failed`` for messages of one batch of ``size``: undecodable ones are logged
        one by one, the others in one line; the verdicts are recorded concurrently (so
        they share round trips)."""
        consumer = self.consumer
        decided = []
        counts = {"retried": 0, "dead": 0, "deferred": 0}
        first: tuple[Failure, BaseException] | None = None
        for item, exc in failures:
            failure, attempt, final = self.decide(item, exc)
            decided.append((item, failure, attempt, final))
            if failure.decode:
                self._log(item, failure, attempt, final, exc)
                continue
            counts["deferred" if failure.defer else "dead" if final else "retried"] += 1
            first = first or (failure, exc)
            if log.isEnabledFor(logging.DEBUG):
                self._log(item, failure, attempt, final, exc, logging.DEBUG)
        if first is not None:
            failure, exc = first
            what = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
            level = logging.DEBUG if counts["deferred"] == sum(counts.values()) else logging.WARNING
            log.log(
                level, "%s: %d of a batch of %d failed (%s): %s", consumer,
                sum(counts.values()), size, what, failure.error[:500],
                exc_info=None if isinstance(exc, HandlerSignal) else exc,
            )  # fmt: skip
        async with anyio.create_task_group() as tg:
            for item, failure, attempt, final in decided:
                tg.start_soon(self.settle, item, failure, attempt, final)

    def decide(self, item: Item, exc: BaseException) -> tuple[Failure, int, bool]:
        """What ``exc`` means for ``item``: the failure, its attempt, and whether it is
        final (dead letters); a deferral has attempt 0 and is not final."""
        failure = Failure.of(exc)
        if failure.defer:
            return failure, 0, False
        options = self.consumer.options
        if isinstance(exc, TimeoutError) and options.timeout is not None:
            failure.error = f"handler timed out after {options.timeout}s"
        attempt = self.consumer.attempt(item)
        final = outcome(exc, attempt, options.max_attempts) != "retry"
        failure.retry_delay = None if final else self.delay(attempt, failure.retry_delay)
        return failure, attempt, final

    def _log(
        self,
        item: Item,
        failure: Failure,
        attempt: int,
        final: bool,
        exc: BaseException,
        level: int = logging.WARNING,
    ) -> None:
        # Each line says what happens next: a retry (when, which attempt) or the dead letters.
        consumer = self.consumer
        msg_id = consumer.message(item, None).id
        if failure.defer:
            log.debug("%s: message %s deferred: %s", consumer, msg_id, failure.error)
            return
        options = consumer.options
        fields = consumer_fields(consumer, msg_id, attempt)
        if failure.reject or failure.decode:  # no retry was ever going to happen
            log.log(
                level, "%s: message %s %s -> dead letters %s", consumer, msg_id,
                failure.error[:500] if failure.reject else f"undecodable: {failure.summary[:500]}",
                consumer.keys.dead, extra=fields,
            )  # fmt: skip
        elif final:
            log.log(
                level, "%s: message %s failed: %s; dead-lettered to %s after %d attempt%s",
                consumer, msg_id, failure.error[:500], consumer.keys.dead, attempt,
                "s" * (attempt != 1), exc_info=exc, extra=fields,
            )  # fmt: skip
        else:
            log.log(
                level, "%s: message %s failed: %s; retrying in %.1f s (attempt %d/%d)",
                consumer, msg_id, failure.error, failure.retry_delay or 0.0, attempt + 1,
                options.max_attempts, extra=fields,
            )  # fmt: skip

    async def settle(self, item: Item, failure: Failure, attempt: int, final: bool) -> None:
        """Record a verdict: dead letter, retry, or deferral; shielded from cancellation."""
        consumer = self.consumer
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    if failure.defer:
                        await consumer.retry(item, failure.retry_delay or 0.0, count=False)
                        consumer.stats.deferred += 1
                        return
                    if final:
                        await consumer.bury(item, self.dead_fields(item, failure, attempt))
                        consumer.stats.dead += 1
                    else:
                        await consumer.retry(item, failure.retry_delay or 0.0)
                        consumer.stats.retried += 1
                    break
                except REDIS_ERRORS as err:
                    if consumer.stopping:  # leave it leased: a peer (or our restart) redelivers it
                        log.warning("%s: verdict not recorded (%r); message stays leased",
                                    consumer, err)  # fmt: skip
                        consumer.keep(item)
                        return
                    await self._wait(err)
            if self._refused is not None:
                self._refused.ok()
            if final:  # its waiters raise RemoteError
                await consumer.reply_failed(item, failure)
            # After the loop: a status write that fails must not repeat the verdict.
            status: Status = "dead" if final else "failed"
            await consumer.track(consumer.message(item, None), status, failure.error)

    async def _wait(self, err: BaseException) -> None:
        consumer = self.consumer
        if isinstance(err, ReplyError):  # a full Redis (OOM), a key of the wrong type...
            if self._refused is None:
                self._refused = Backoff(f"{consumer}: verdicts", None, where="Redis", cap=2.0)
            await self._refused.wait(err)
        else:
            await consumer.backoff.wait(err)

    def delay(self, attempt: int, asked: float | None) -> float:
        """Seconds before the next attempt: what the handler asked, else the backoff."""
        options = self.consumer.options
        if asked is not None:
            return max(0.0, asked)
        ceiling = min(options.retry_max_delay, options.retry_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def dead_fields(self, item: Item, failure: Failure, attempt: int) -> dict[str, Any]:
        """The fields of a dead letter (``protocol/records.py``)."""
        consumer = self.consumer
        msg = consumer.message(item, None)
        return dead_letter(
            msg, consumer.raw(item), failure.error, failure.where, attempt,
            consumer.handler.name, **consumer.dead_extra(item),
        )  # fmt: skip


def outcome(exc: BaseException, attempt: int, max_attempts: int) -> Outcome:
    """What becomes of a message whose attempt ``attempt`` (of ``max_attempts``) raised
    ``exc``: the decision ``Verdicts.failed`` makes (and ``Skip`` and ``Defer``), for
    middleware that report it (``redisflow.otel``)."""
    if isinstance(exc, Skip):
        return "skipped"
    if isinstance(exc, Defer):
        return "deferred"
    if isinstance(exc, Reject):
        return "rejected"
    if isinstance(exc, DecodeError) or attempt >= max_attempts:
        return "dead-lettered"
    return "retry"


def invalid(exc: ValidationError) -> DecodeError:
    """The DecodeError of a payload that does not validate: every error in its message (the
    dead letter's), the first one and the count in its summary (the log's one line)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"]) or "the payload"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return DecodeError(f"invalid payload: {exc}", f"invalid payload: {where}: {first['msg']}{more}")


def consumer_fields(consumer: Settling[Any], msg_id: str, attempt: int) -> dict[str, Any]:
    """Structured fields of a log record about one message (for JSON log handlers)."""
    return {
        "message_id": msg_id,
        "attempt": attempt,
        "handler": consumer.handler.name,
        "source": str(consumer.handler.source),
    }
