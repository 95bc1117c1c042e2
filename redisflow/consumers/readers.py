"""The consumers of one handler: one per key it reads (its source, or the partitions of
every layout in use), started and stopped as the layouts change (``features.partitions``'s
``Drainer`` drives it, as its ``Readers``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import CONSUMERS
from .base import Consumer
from .contract import Context, Gate

if TYPE_CHECKING:
    from ..handler import Handler


class HandlerConsumers:
    """The consumers of ``handler``, one per key, kept in ``every`` (the flow's list) too;
    ``run`` starts one added while the flow runs."""

    def __init__(
        self,
        handler: Handler,
        ctx: Context,
        chain: list[object],
        keys: list[str],
        every: list[Consumer[Any]],
        run: Callable[[Consumer[Any]], Awaitable[None]],
    ) -> None:
        self.handler, self.ctx, self.chain, self.every, self.run = handler, ctx, chain, every, run
        self.source = handler.source
        # Partitions share the handler's concurrency: each runs up to all of it, and one
        # gate bounds their sum. (A handler that starts with one key and reads more later
        # gets a gate for those: its first consumer keeps its own concurrency.)
        many = len(keys) > 1 or handler.options.partitions > 1
        self.gate = Gate(handler.options.concurrency) if many else None
        self.mine: dict[str, Consumer[Any]] = {}
        for key in keys:
            self._add(key)

    def _add(self, key: str) -> Consumer[Any]:
        consumer = CONSUMERS[self.source.kind](self.handler, self.ctx, self.chain, key)
        if self.gate is None and self.mine:
            self.gate = Gate(self.handler.options.concurrency)
        consumer.gate = self.gate
        self.mine[key] = consumer
        self.every.append(consumer)
        return consumer

    def reading(self) -> set[str]:
        """The keys read now."""
        return set(self.mine)

    async def read(self, keys: Sequence[str]) -> None:
        """Start consumers for ``keys`` too."""
        for key in keys:
            if key not in self.mine:
                await self.run(self._add(key))

    async def drained(self, keys: Sequence[str]) -> bool:
        """Whether ``keys`` hold nothing for anyone."""
        return all([await self.mine[k].drained() for k in keys if k in self.mine])

    async def leave(self, keys: Sequence[str]) -> None:
        """Stop the consumers of ``keys`` (they hold nothing)."""
        for key in keys:
            consumer = self.mine.pop(key, None)
            if consumer is not None:
                consumer.stop()
                self.every.remove(consumer)
