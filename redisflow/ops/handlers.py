"""Which handler each live worker runs for a source, so that two apps on one prefix that
handle the same queue with different functions or payload types are told: each message
goes to one of them, and those the other cannot validate are dead-lettered by it.

Every running flow records, per handler, ``Keys.handlers`` of its source (``<group>|<worker>``
-> JSON ``[identity, ms]``: ``Handler.identity`` and when it was written), again every
``EVERY`` seconds, and deletes it when it stops; an entry older than ``STALE_MS`` belongs to
a worker that died. A flow warns at start of the live entries of its sources that differ
from its own handler (``rivals``); ``redisflow stats`` lists them too (``conflicts``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import anyio
import orjson

from ..connection import REDIS_ERRORS
from ..keys import Keys
from ..message import Source
from ..protocol.envelope import now_ms

if TYPE_CHECKING:
    from ..client import Client
    from ..handler import Handler

log = logging.getLogger("redisflow")

#: How often a running flow writes its entries again, and when an entry is stale.
EVERY = 10.0
STALE_MS = 30_000


def _field(source: Source, worker: str) -> str:
    return f"{source.group or ''}|{worker}"


async def announce(client: Client, handlers: Iterable[Handler], worker: str) -> None:
    """Record (again) that ``worker`` runs ``handlers`` (channels excluded: every
    subscriber gets every message)."""
    now = now_ms()
    commands = [
        ("HSET", Keys(client.config.prefix, h.source.name).handlers,
         _field(h.source, worker), orjson.dumps([h.identity, now]))
        for h in handlers if h.source.kind != "channel"
    ]  # fmt: skip
    if commands:
        await client.send_many(*commands)


async def introduce(client: Client, handlers: Sequence[Handler], worker: str) -> bool:
    """``announce``, and warn of each live worker that handles one of the same sources
    differently (another function or payload type); whether it was recorded."""
    try:
        await announce(client, handlers, worker)
        for handler in handlers:
            for other in await rivals(client, handler, worker):
                log.warning(
                    "%s: another live worker handles it with %s, this one with %s: each"
                    " message goes to one of them, and those one cannot validate are"
                    " dead-lettered by it (two apps on one prefix? give each its own)",
                    handler.source, other, handler.identity,
                )  # fmt: skip
    except REDIS_ERRORS as exc:
        log.warning("handlers not recorded for `redisflow stats` (%s)", exc)
        return False
    return bool(handlers)


async def keep(client: Client, handlers: Sequence[Handler], worker: str) -> None:
    """``announce`` every ``EVERY`` seconds, until cancelled (best effort)."""
    while True:
        await anyio.sleep(EVERY)
        with contextlib.suppress(*REDIS_ERRORS):
            await announce(client, handlers, worker)


async def leave(client: Client, handlers: Iterable[Handler], worker: str) -> None:
    """Delete the entries of ``worker`` (it stops)."""
    commands = [
        ("HDEL", Keys(client.config.prefix, h.source.name).handlers, _field(h.source, worker))
        for h in handlers if h.source.kind != "channel"
    ]  # fmt: skip
    if commands:
        await client.send_many(*commands)


async def live(client: Client, source: Source) -> dict[str, str]:
    """The live workers of ``source`` (its group) and the handler each runs; stale entries
    are deleted on the way."""
    key = Keys(client.config.prefix, source.name).handlers
    flat = await client.send("HGETALL", key)
    found: dict[str, str] = {}
    stale: list[bytes] = []
    now = now_ms()
    for i in range(0, len(flat), 2):
        group, _, worker = flat[i].decode().partition("|")
        try:
            identity, at = orjson.loads(flat[i + 1])
        except (orjson.JSONDecodeError, ValueError, TypeError):
            stale.append(flat[i])
            continue
        if not isinstance(at, int) or now - at > STALE_MS:
            stale.append(flat[i])
        elif group == (source.group or ""):
            found[worker] = str(identity)
    if stale:
        await client.send("HDEL", key, *stale)
    return found


async def rivals(client: Client, handler: Handler, worker: str) -> list[str]:
    """The handlers of other live workers on ``handler``'s source that differ from it."""
    others = await live(client, handler.source)
    return sorted({i for w, i in others.items() if w != worker and i != handler.identity})


async def conflicts(client: Client, sources: Iterable[Source]) -> list[str]:
    """A line per source that live workers handle with different handlers."""
    lines: list[str] = []
    for source in sources:
        if source.kind == "channel":
            continue
        found = sorted(set((await live(client, source)).values()))
        if len(found) > 1:
            lines.append(
                f"{source} has {len(found)} different live handlers, each taking some of its"
                f" messages: {', '.join(found)}"
            )
    return lines
