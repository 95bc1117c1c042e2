"""Dead letters of one source: list, inspect, replay and purge them (``flow.dlq(name)``).

A dead letter is an entry of the stream ``Keys.dead``, written by a consumer when it gives up
on a message (``consumers/verdicts.py``): the payload bytes in ``data``, and ``message_id``,
``error``, ``where``, ``attempts``, ``handler``, ``source``, ``failed_at`` (ms), plus
``channel`` for Pub/Sub and ``priority`` for a priority queue. Entries are read oldest
first, a page at a time, and filtered here (by handler, error text, age or id).

A replay sends each payload back to its source as a new first attempt and deletes its dead
letter in one script, which pushes only the letters it deleted itself: each letter goes back
exactly once, however many replays run at once, and the count returned is what this call
replayed (``lua/dlq_replay.lua``). A list or priority item gets a fresh envelope that keeps
the original message id and headers; a priority queue item goes back at its recorded level
(``priority=`` overrides it). A stream entry is appended anew, so every consumer group of
the stream reads it again (``handler=`` picks the dead letters of one group's handler).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..consumers.kinds import TRAITS, Letter
from ..errors import ConfigError
from ..features import compound
from ..message import KINDS, Kind
from ..middleware import Outgoing
from ..protocol import scripts
from ..protocol.priority import check_priority
from ..protocol.records import DeadLetter
from ..protocol.replies import mapping

if TYPE_CHECKING:
    from ..client import Client

#: Entries read per XRANGE page (and deleted per XDEL); replayed per script call.
PAGE = 500
BATCH = 100
_ENTRY_ID = re.compile(r"\d+(-\d+)?")


@dataclass(frozen=True, slots=True)
class Match:
    """Which dead letters an operation applies to; every given criterion must hold."""

    handler: str | None = None
    error: str | None = None
    older_than: float | None = None
    newer_than: float | None = None

    def __call__(self, dead: DeadLetter, now: datetime) -> bool:
        if self.handler is not None and dead.handler != self.handler:
            return False
        if self.error is not None and self.error not in dead.error:
            return False
        if self.older_than is None and self.newer_than is None:
            return True
        if dead.failed_at is None:
            return False
        age = (now - dead.failed_at).total_seconds()
        if self.older_than is not None and age < self.older_than:
            return False
        return self.newer_than is None or age <= self.newer_than


class DeadLetters:
    """The dead letters of one source (``flow.dlq(name, kind)``).

    Filters, in every method: ``handler`` (exact qualname), ``error`` (a substring of the
    error), ``older_than``/``newer_than`` (seconds since the message died), ``ids`` (entry
    ids of the dead-letter stream), and ``limit`` (at most that many, oldest first).
    """

    def __init__(self, client: Client, name: str, kind: Kind = "queue") -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown source kind {kind!r}: one of {', '.join(KINDS)}")
        self.client, self.name, self.kind = client, name, kind
        self.key = client.keys(name).dead  # of the source (of partition 0: see ``streams``)

    async def partitions(self) -> builtins.list[str]:
        """The keys whose dead letters these are: the source, or each of its partitions."""
        if not TRAITS[self.kind].keyed:
            return [self.name]
        return await self.client.layouts.all_keys(self.name)

    async def count(self) -> int:
        """How many dead letters the source has (all its partitions)."""
        keys = [self.client.keys(p).dead for p in await self.partitions()]
        return sum(await self.client.send_many(*(("XLEN", key) for key in keys)))

    async def list(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = 100,
    ) -> builtins.list[DeadLetter]:
        """The matching dead letters, oldest first, at most ``limit`` (None: all)."""
        match = Match(handler, error, older_than, newer_than)
        return [dead async for dead in self._matching(match, ids, limit)]

    async def show(self, entry_id: str) -> DeadLetter | None:
        """One dead letter by its entry id, or None."""
        found = await self.list(ids=[entry_id], limit=1)
        return found[0] if found else None

    async def replay(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = None,
        priority: int | None = None,
        dry_run: bool = False,
    ) -> int:
        """Send the matching dead letters back to the source (a priority queue: at their
        recorded level, or ``priority``) and delete them; returns how many this call
        replayed (``dry_run``: would replay)."""
        if priority is not None:
            check_priority(priority)
        done = 0
        match = Match(handler, error, older_than, newer_than)
        async for batch in self._batches(match, ids, limit, BATCH):
            if dry_run:
                done += len(batch)
                continue
            for part, letters in _by_partition(batch).items():
                done += await self._replay(part, letters, priority)
        return done

    async def purge(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete the matching dead letters; returns how many this call deleted (``dry_run``:
        would delete)."""
        done = 0
        match = Match(handler, error, older_than, newer_than)
        async for batch in self._batches(match, ids, limit, PAGE):
            if dry_run:
                done += len(batch)
                continue
            for part, letters in _by_partition(batch).items():
                dead = self.client.keys(part).dead
                done += int(await self.client.send("XDEL", dead, *(d.id for d in letters)))
        return done

    # -- internals ------------------------------------------------------------------------

    async def _matching(
        self, match: Match, ids: Sequence[str], limit: int | None
    ) -> AsyncIterator[DeadLetter]:
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise ConfigError(f"limit must be >= 1, got {limit}")
        if isinstance(ids, str):
            raise ConfigError(f"ids must be a sequence of entry ids, not {ids!r}")
        for wanted in ids:
            if not _ENTRY_ID.fullmatch(wanted):
                raise ConfigError(f"not a stream entry id (like 1700000000000-0): {wanted!r}")
        now = datetime.now(UTC)
        found = 0
        parts = [self._entries(part, ids) for part in await self.partitions()]
        async for part, entry_id, fields in _oldest_first(parts):
            dead = DeadLetter.parse(entry_id, fields, part)
            if match(dead, now):
                yield dead
                found += 1
                if found == limit:
                    return

    async def _batches(
        self, match: Match, ids: Sequence[str], limit: int | None, size: int
    ) -> AsyncIterator[builtins.list[DeadLetter]]:
        batch: builtins.list[DeadLetter] = []
        async for dead in self._matching(match, ids, limit):
            batch.append(dead)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _entries(
        self, part: str, ids: Sequence[str]
    ) -> AsyncIterator[tuple[str, bytes, dict[bytes, bytes]]]:
        send = self.client.connector.send
        key = self.client.keys(part).dead
        if ids:
            replies = await send.many(*(("XRANGE", key, i, i) for i in ids))
            for reply in replies:
                for entry_id, flat in reply:
                    yield part, entry_id, mapping(flat)
            return
        start = "-"
        while True:
            page = await send("XRANGE", key, start, "+", "COUNT", PAGE)
            for entry_id, flat in page:
                yield part, entry_id, mapping(flat)
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def _replay(
        self, part: str, batch: builtins.list[DeadLetter], priority: int | None
    ) -> int:
        if self.client.produce_chain is None:
            return await self._write(
                part, [(dead, dead.data, dead.headers) for dead in batch], priority
            )
        done = 0
        for dead in batch:  # one letter per call: its write happens inside the chain

            async def send(out: Outgoing, dead: DeadLetter = dead) -> int:
                return await self._write(part, [(dead, out.payload, out.headers)], priority)

            headers = {k: v for k, v in (dead.headers or {}).items() if k != "channel"}
            out = Outgoing(
                self.kind, self.name, dead.data, headers, reason="replay", id=dead.message_id
            )
            done += int(await self.client.send_outgoing(out, send) or 0)
        return done

    async def _write(
        self,
        part: str,
        letters: builtins.list[tuple[DeadLetter, bytes, dict[str, str] | None]],
        priority: int | None,
    ) -> int:
        """Send ``letters`` (each with the payload and headers to write) back and delete
        them, in one script call; how many this call replayed."""
        traits = TRAITS[self.kind]
        args: builtins.list[Letter] = []
        for dead, data, headers in letters:
            if headers:
                headers = {k: v for k, v in headers.items() if k != "channel"} or None
            args.append(traits.letter(dead, data, headers or None, priority, self.name))
        keys, kind = self.client.keys(part), str(self.kind)
        target = traits.holder(part, keys) if traits.keyed else keys.dead  # a channel: any key
        if traits.internal:  # a schedule's run goes back to its internal queue, as a queue's
            kind = "queue"
        if not traits.keyed and all(dead.channel == self.name for dead, _, _ in letters):
            # An exact channel (a pattern's letters come from other channels: classic).
            command, inline = await compound.publish_command(
                self.client.connector, self.client.config.sharded_pubsub, self.name, None, keys.dead
            )
            kind = "schannel" if command == "SPUBLISH" and inline else kind
        call = scripts.dlq_replay(keys.dead, target, keys.seq, keys.wake, kind, args)
        replayed: int = await self.client.connector.run(call)
        return replayed


def _by_partition(batch: builtins.list[DeadLetter]) -> dict[str, builtins.list[DeadLetter]]:
    parts: dict[str, builtins.list[DeadLetter]] = {}
    for dead in batch:
        parts.setdefault(dead.partition, []).append(dead)
    return parts


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def _oldest_first(
    streams: builtins.list[AsyncIterator[tuple[str, bytes, dict[bytes, bytes]]]],
) -> AsyncIterator[tuple[str, bytes, dict[bytes, bytes]]]:
    """The entries of several dead-letter streams (partitions), merged by entry id."""
    heads: builtins.list[tuple[str, bytes, dict[bytes, bytes]] | None] = []
    for stream in streams:
        heads.append(await anext(stream, None))
    while True:
        live = [(i, head) for i, head in enumerate(heads) if head is not None]
        if not live:
            return
        i, head = min(live, key=lambda pair: _order(pair[1][1]))
        yield head
        heads[i] = await anext(streams[i], None)
