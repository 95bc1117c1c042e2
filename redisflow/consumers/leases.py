"""The lease of a list or priority queue worker (a base class of ``queue.QueueConsumer``):
its renewal, the recovery of dead workers' batches, and the hand-back of what it holds.

A worker holds a lease (``Keys.leases``, renewed every ``tick`` by ``lua/maintain.lua``,
which also moves due delayed messages back and lists expired workers). When a peer's lease
has expired, its batches go back to the queue with one attempt counted each
(``lua/recover.lua``; one past ``max_attempts`` is dead-lettered here). At stop, or after a
lost reply, a worker gives its own messages back (``lua/release.lua``). A kind whose
messages live elsewhere (fair groups) says how in ``release_call``, ``recover_call`` and
``tick``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from ..connection import REDIS_ERRORS
from ..errors import ReplyError
from ..protocol import scripts
from ..protocol.replies import text
from .base import log
from .verdicts import Failure

if TYPE_CHECKING:
    from ..config import FlowConfig, HandlerOptions
    from ..connection import Connector
    from ..keys import Keys
    from .verdicts import Verdicts


class Leases:
    """Lease renewal, recovery and hand-back of a queue consumer."""

    # What ``QueueConsumer`` (and its bases) provide.
    name: str
    worker: str
    wset: str
    mode: ClassVar[str]
    keys: Keys
    config: FlowConfig
    connector: Connector
    options: HandlerOptions
    verdicts: Verdicts[Any]
    acks: list[Any]
    acks_sent: list[Any]
    acks_flushing: list[Any]
    _known: dict[str, Any]
    _wait_key: str | None

    if TYPE_CHECKING:

        def acks_unanswered(self) -> None: ...

        async def _acker(self) -> None: ...

        def _next_key(self) -> str: ...

        def adopt(self, key: str, reply: list[Any]) -> list[Any]: ...

        def attempt(self, item: Any) -> int: ...

        def release_args(self, items: list[Any]) -> list[Any]: ...

        async def refresh_cancels(self) -> None: ...

        async def drop_cancelled(self, items: list[Any]) -> list[Any]: ...

    # -- what a kind may change -------------------------------------------------------------

    def release_call(
        self, acked: list[Any], known: list[str], whole: list[str], items: list[Any]
    ) -> scripts.Call:
        """The script call that gives back ``items`` (the unfinished ones of the batches
        ``known``) and the batches ``whole``, and drops ``known`` and those ``acked``."""
        return scripts.release(
            self.name, self.keys.leases, self.wset, mode=self.mode, worker=self.worker,
            drop=[*acked, *known], whole=whole, items=self.release_args(items),
        )  # fmt: skip

    def recover_call(self, worker: str, dead_set: str, key: str, held: list[str]) -> scripts.Call:
        """The script call that gives back the batches ``held`` of the dead ``worker``."""
        return scripts.recover(
            self.name, self.keys.leases, dead_set, key, self.wset, held, mode=self.mode,
            worker=worker, max_attempts=self.options.max_attempts,
        )  # fmt: skip

    async def tick(self) -> float:
        """More housekeeping after the lease renewal; the seconds until it is due again."""
        return self.config.tick

    # -- the lease ------------------------------------------------------------------------

    async def _recover_own(self) -> None:
        """After a lost connection: acks whose reply was lost are sent again, and batches
        this worker leased but never heard of (the reply of a fetch or of a BLMOVE was
        lost) go back to the queue, instead of waiting for this worker to stop. Batches
        whose ack is on its way (with the acker) are not orphans."""
        self.acks_unanswered()
        self._wait_key = None
        held = {text(b) for b in await self.connector.send("SMEMBERS", self.wset)}
        orphans = sorted(held - set(self._known) - set(self.acks) - set(self.acks_flushing))
        if not orphans:
            return
        moved = await self.connector.run(self.release_call([], [], orphans, []))
        await self._maintain_once()  # the release drops an empty worker's lease: renew it
        if moved:
            log.warning("%s: %d messages whose fetch reply was lost were put back", self, moved)

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker)
            failing = False
            while True:
                try:
                    wait = await self._maintain_once()
                    if failing:
                        log.warning("%s: maintenance goes through again", self)
                    failing = False
                except REDIS_ERRORS as exc:
                    if isinstance(exc, ReplyError) and not failing:  # once per outage
                        log.warning("%s: maintenance refused (%s); will try again", self, exc)
                    failing = failing or isinstance(exc, ReplyError)
                    wait = self.config.tick
                except Exception:  # a bug here must not stop the handlers: log, go on
                    log.exception("%s: maintenance failed", self)
                    wait = self.config.tick
                await anyio.sleep(wait)

    async def _maintain_once(self) -> float:
        keys = self.keys
        call = scripts.maintain(
            self.name, keys.delayed, keys.leases, keys.seq, keys.wake, mode=self.mode,
            worker=self.worker, lease_ms=int(self.config.lease * 1000), max_moved=256,
        )  # fmt: skip
        reply = await self.connector.run(call)
        next_due, dead = int(reply[0]), [text(w) for w in reply[2:]]
        for worker in dead:
            if worker != self.worker:
                await self._recover(worker)
        wait = min(self.config.tick, await self.tick())
        if next_due >= 0:
            wait = min(wait, next_due / 1000)
        return wait

    async def _recover(self, worker: str) -> None:
        """Give a dead worker's batches back, counting an attempt for each message (as a
        stream's delivery count does); those past ``max_attempts`` are dead-lettered here,
        so a message that kills every worker that takes it cannot stall the queue."""
        dead_set = self.keys.batches(worker)
        await self.refresh_cancels()  # one past max_attempts ends as cancelled, not as dead
        held = [text(b) for b in await self.connector.send("SMEMBERS", dead_set)]
        key = self._next_key()
        reply = await self.connector.run(self.recover_call(worker, dead_set, key, held))
        moved, over = int(reply[0]), reply[1:]
        if moved > 0:
            log.warning("%s: worker %s died; %d messages delivered again", self, worker, moved)
        if moved < 0 or not over:
            return
        for item in await self.drop_cancelled(self.adopt(key, over)):  # counts this delivery
            count = self.attempt(item)
            failure = Failure(f"delivered {count} times without completing (its workers died)")
            await self.verdicts.settle(item, failure, count, final=True)

    async def release(self, started: list[Any], unstarted: list[Any]) -> None:
        unfinished = started + unstarted
        acked = [*self.acks_sent, *self.acks]
        known = {*(a for a in acked if isinstance(a, str)), *self._known}
        held = [text(b) for b in await self.connector.send("SMEMBERS", self.wset)]
        whole = [key for key in held if key not in known]
        call = self.release_call(acked, list(self._known), whole, unfinished)
        moved = await self.connector.run(call)
        self.acks.clear()
        self.acks_sent.clear()
        self._known.clear()
        if unfinished or moved:
            log.info("%s: handed back %d messages", self, len(unfinished) + moved)
