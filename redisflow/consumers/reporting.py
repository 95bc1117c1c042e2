"""What a consumer tells ``redisflow stats`` in other processes: its counters, summed over
every worker in ``Keys.stats``, and how many messages it holds, in ``Keys.inflight`` (the
record formats: ``protocol/records.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..connection import REDIS_ERRORS
from ..errors import ReplyError
from ..protocol.records import counter_field, inflight_field, inflight_value
from .contract import Stats

if TYPE_CHECKING:
    from ..connection import Connector
    from ..keys import Keys

log = logging.getLogger("redisflow")


class Reporter:
    """Reports the counters of one handler of one worker."""

    def __init__(self, connector: Connector, keys: Keys, handler: str, worker: str) -> None:
        self.connector, self.keys, self.handler, self.worker = connector, keys, handler, worker
        self._reported = Stats()  # what has been sent to Redis
        self._once = False

    async def report(self, stats: Stats, held: int, final: bool = False) -> None:
        """Send the counter deltas since the last report and the in-flight gauge (``final``:
        remove the gauge, this worker is leaving)."""
        commands: list[tuple[Any, ...]] = []
        for counter in Stats.FIELDS:
            delta = getattr(stats, counter) - getattr(self._reported, counter)
            if delta or not self._once:  # zeros once: a quiet handler is listed
                field = counter_field(self.handler, counter)
                commands.append(("HINCRBY", self.keys.stats, field, delta))
        gauge = inflight_field(self.handler, self.worker)
        if final:
            commands.append(("HDEL", self.keys.inflight, gauge))
        else:
            commands.append(("HSET", self.keys.inflight, gauge, inflight_value(held)))
        snapshot = Stats(*(getattr(stats, counter) for counter in Stats.FIELDS))
        await self.connector.send.many(*commands)
        self._reported, self._once = snapshot, True

    async def loop(self, interval: float, gauges: Callable[[], tuple[Stats, int]]) -> None:
        """Report every ``interval`` seconds until cancelled; best effort (an error reply,
        a full Redis say, is logged once until reports go through again)."""
        failing = False
        while True:
            await anyio.sleep(interval)
            try:
                await self.report(*gauges())
                if failing:
                    log.warning("%s: counters reported again", self.handler)
                failing = False
            except REDIS_ERRORS as exc:
                if not failing and isinstance(exc, ReplyError):  # once per outage
                    log.warning("%s: counters not reported (%s); will try again", self.handler, exc)
                failing = failing or isinstance(exc, ReplyError)
