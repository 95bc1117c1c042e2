"""Compound sends: the commands of one producer call run in one Lua script, atomic, with
every check before the first write (``lua/produce.lua``); and which publish command a
channel takes.

``dedup_key``: nothing is sent if the same key was seen within ``dedup_ttl`` seconds (a
marker per key, checked first and set last, so a send that fails leaves none: docs/design.md,
"Dedup"); the call returns None. ``notify`` (queues): the message is also published, as a
wake-up; the list stays the only source of truth. ``durable`` (channels): the message is
also appended to a stream, written before the publish. ``index`` (streams): the entry id is
added to one set per indexed field value (``indexes.py``).

On a cluster with sharded Pub/Sub, a script may publish only to a channel of its own slot;
a channel of another slot is published right after the script, in the same round trip when
it can be (docs/design.md, "Cluster").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import to_ms
from ..keys import slot
from ..protocol import scripts

if TYPE_CHECKING:
    from ..connection import Connector, Sender, WaitingSender


async def send(
    connector: Connector,
    dedup: str | None,
    ttl: float,
    keys: Sequence[tuple[str, str]],
    commands: list[Sequence[Any]],
    publish: tuple[str, bool] | None = None,
    channel: str | None = None,
    *messages: bytes,
    through: Sender | WaitingSender | None = None,
) -> list[Any] | None:
    """Run ``commands`` in one script and return their replies, unless ``dedup`` (a key)
    was seen within ``ttl`` seconds (None). ``keys``: every key they touch, with its
    expected type. ``publish`` (the command, and whether the script may run it) then sends
    ``messages`` to ``channel``."""
    inline = publish is not None and publish[1]
    if inline and publish is not None:
        commands = [*commands, *((publish[0], channel, message) for message in messages)]
    replies = await connector.run(scripts.produce(dedup, to_ms(ttl), keys, commands), through)
    if replies is None:
        return None
    if publish is not None and not inline:  # a shard channel of another slot: right after
        after = [(publish[0], channel, message) for message in messages]
        replies = [*replies, *(await (through or connector.send).many(*after))]
    return list(replies)


async def publish_command(
    connector: Connector,
    configured: bool | None,
    channel: str,
    sharded: bool | None,
    script_key: str,
) -> tuple[str, bool]:
    """The publish command for ``channel``: SPUBLISH when sharded (asked for, else
    ``configured``, else on a cluster), else PUBLISH; and whether a script on
    ``script_key`` may run it (a shard channel must share its slot)."""
    await connector.ready()
    if sharded is None:
        sharded = configured
    if sharded is None:
        sharded = connector.cluster
    inline = not (sharded and connector.cluster and slot(channel) != slot(script_key))
    return ("SPUBLISH" if sharded else "PUBLISH"), inline
