"""Results of handlers, on the consumer side: what a message that asks for one gets.

A handler's return value is written when the message asks for it (``features/results.py``:
the header ``rf-result``) or the handler keeps every result (``result_ttl=``), before the
message is acknowledged: a result that cannot be written fails the attempt (it is retried),
and a worker that dies between the two runs the message again, whose result then replaces
the first (at-least-once). A message that fails for good gets a failure record after its
dead letter, so its waiters raise ``RemoteError``. Whether a message asks is one byte
search of its item (``head``), made only once a fetch held a message that asked
(``asking``: one search over each fetch until then), so a consumer never asked tests no
message (benchmarks/README.md, "Results and request/reply").
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..connection import REDIS_ERRORS
from ..features.results import ASKS, TTL_HEADER, Results

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..config import FlowConfig, HandlerOptions
    from ..connection import Connector
    from ..message import Message
    from .contract import Stats
    from .verdicts import Failure

Item = TypeVar("Item")
log = logging.getLogger("redisflow")


class Replying(Generic[Item]):
    """Writing the results of one consumer's messages."""

    connector: Connector
    config: FlowConfig
    options: HandlerOptions
    stats: Stats

    if TYPE_CHECKING:

        def message(self, item: Item, value: Any) -> Message[Any]: ...

    #: Whether a message fed to this consumer has asked for a result (or the handler keeps
    #: them all): until then the workers test no message (``asking`` tests each fetch).
    asked: bool = False

    def asking(self, items: Iterable[Item]) -> list[Item]:
        """``items`` (a fetch, about to be fed to the workers), having set ``asked`` if
        any of them asks for a result: one byte search over them all."""
        items = list(items)
        if self.options.result_ttl is not None or ASKS in b"".join(map(self.head(), items)):
            self.asked = True
        return items

    @cached_property
    def results(self) -> Results:
        """The writer of result records."""
        return Results(self.connector, self.config.prefix)

    def head(self) -> Callable[[Item], bytes]:
        """What ``_work`` searches for ``ASKS`` in each item: bytes that hold its headers
        (a C ``itemgetter`` for most kinds: a message that does not ask costs one call and
        one byte search, no Python frame). A false hit (a payload that holds the text) is
        only a closer look: ``reply`` writes nothing for a message that did not ask."""
        return self._headers_of

    def _headers_of(self, item: Item) -> bytes:
        return ASKS if TTL_HEADER in self.message(item, None).headers else b""

    async def reply(self, item: Item, value: Any) -> None:
        """Write ``value`` as the result of ``item``'s message, if it asked for one."""
        msg = self.message(item, None)
        if await self.results.succeeded(msg, value, self.options.result_ttl):
            self.stats.results += 1

    async def reply_many(self, items: list[Item]) -> list[tuple[Item, Any]]:
        """Write a null result for each message of a batch handler that asks (a batch
        handler's return value is for the batch); those whose write failed, to retry."""
        if not self.asked:
            return []
        head, keep_all = self.head(), self.options.result_ttl is not None
        failed: list[tuple[Item, Any]] = []
        for item in items:
            if keep_all or ASKS in head(item):
                try:
                    await self.reply(item, None)
                except REDIS_ERRORS as exc:
                    failed.append((item, exc))
        return failed

    async def reply_failed(self, item: Item, failure: Failure) -> None:
        """Record the final failure of ``item``'s message for its waiters (best effort:
        the dead letter is written already)."""
        where = "rejected" if failure.reject else "dead-lettered"
        try:
            await self.results.failed(
                self.message(item, None), where, failure.error, self.options.result_ttl
            )
        except REDIS_ERRORS as exc:
            log.warning("failure of %s not recorded for its waiters: %r", item, exc)
