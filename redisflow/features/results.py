"""Results of handlers: the record a message's result is kept in, and its push to waiters.

A message asks for a result with the header ``rf-result`` (its TTL in ms; ``request``,
``enqueue(..., result_ttl=)`` or a handler's ``result_ttl`` option); ``rf-result-id`` names
the record when the id is not the message's own (a request, a channel message). The record
is one string that expires, ``<prefix>:result:{<id>}``::

    b"1" + JSON of the return value             the handler returned
    b"0" + JSON [where, error]                  it failed for good: dead-lettered, rejected,
                                                cancelled

written with its push on ``<prefix>:reply:{<id>}`` (SPUBLISH, the same slot) in one script
(``lua/result.lua``), so a waiter subscribed to the channel gets the record itself, and one
that subscribes later finds it with one GET (docs/design.md, "Results"). A record replaces
the one before (a message run again), except a cancellation's, which is final.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError, RemoteError
from ..keys import reply_channel, result_key
from ..protocol import envelope
from ..protocol.scripts import Call, Script

if TYPE_CHECKING:
    from ..connection import Connector
    from ..message import Message

RESULT = Script("result")
#: The header that asks for a result: the record's TTL in milliseconds.
TTL_HEADER = "rf-result"
#: The header that names the record (default: the message id; a stream's is qualified).
ID_HEADER = "rf-result-id"
#: What an item's envelope or headers contain when its message asks for a result (the
#: consumers' cheap test, before any header is parsed).
ASKS = b'"rf-result"'
#: Default TTL of a result, in seconds.
RESULT_TTL = 3600.0


def check_ttl(ttl: object) -> float:
    """A ``result_ttl``, checked: seconds > 0."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ConfigError(f"result_ttl must be > 0 seconds, got {ttl!r}")
    return float(ttl)


def ask(headers: dict[str, str], ttl: float, result_id: str | None = None) -> dict[str, str]:
    """``headers`` with the request for a result kept ``ttl`` seconds (in ``result_id``)."""
    headers[TTL_HEADER] = str(max(1, int(check_ttl(ttl) * 1000)))
    if result_id is not None:
        headers[ID_HEADER] = result_id
    return headers


def result_id(msg: Message[Any]) -> str:
    """The id of a message's result: its ``rf-result-id`` header, else its id (a stream
    entry's qualified by its stream, entry ids being unique per stream only)."""
    given = msg.headers.get(ID_HEADER)
    if given:
        return given
    return own_id(msg.id, msg.source.name if msg.source.kind == "stream" else None)


def own_id(message_id: str, stream: str | None = None) -> str:
    """The result id of a message sent without ``rf-result-id``."""
    return message_id if stream is None else f"{stream}/{message_id}"


def success(value: Any) -> bytes:
    """The record of a handler's return value (pydantic models in JSON mode)."""
    return b"1" + envelope.encode(value)


def failure(where: str, error: str) -> bytes:
    """The record of a final failure."""
    return b"0" + orjson.dumps([where, error])


def read(record: bytes, rid: str) -> bytes:
    """The JSON of a success record; RemoteError for a failure record."""
    if record[:1] == b"1":
        return record[1:]
    try:
        where, error = orjson.loads(record[1:])
    except (orjson.JSONDecodeError, ValueError):
        where, error = "unknown", repr(record[:200])
    raise RemoteError(str(where), str(error), rid)


class Results:
    """Writes results and failure records (``Client.results``)."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.prefix = prefix

    def call(self, rid: str, record: bytes, ttl_ms: int, first: bool = False) -> Call:
        """The script call that keeps ``record`` for ``ttl_ms`` and pushes it; ``first``:
        only if no record exists (the first channel handler to reply wins)."""
        key, channel = result_key(self.prefix, rid), reply_channel(self.prefix, rid)
        return Call(RESULT, (key,), (record, ttl_ms, channel, "nx" if first else ""))

    async def write(self, rid: str, record: bytes, ttl_ms: int, first: bool = False) -> None:
        """Keep ``record`` as the result ``rid`` and push it to its waiters."""
        await self.connector.run(self.call(rid, record, ttl_ms, first))

    async def succeeded(self, msg: Message[Any], value: Any, default_ttl: float | None) -> bool:
        """Record ``value`` as ``msg``'s result, if it asked for one (or ``default_ttl``,
        the handler's ``result_ttl``, says to keep every result); whether it did."""
        ttl = _ttl_ms(msg, default_ttl)
        if ttl is None:
            return False
        first = msg.source.kind == "channel"
        await self.write(result_id(msg), success(value), ttl, first)
        return True

    async def failed(
        self,
        msg_or_id: Message[Any] | str,
        where: str,
        error: str,
        default_ttl: float | None = None,
    ) -> bool:
        """Record that a message failed for good (``where``: ``dead-lettered``,
        ``rejected``, ``cancelled``): waiters of its result get ``RemoteError(where,
        error)``. A Message is recorded only if it asked for a result (or ``default_ttl``
        is given); a result id always, for ``default_ttl`` (default one hour). Whether a
        record was written."""
        if isinstance(msg_or_id, str):
            ttl_s = RESULT_TTL if default_ttl is None else check_ttl(default_ttl)
            await self.write(msg_or_id, failure(where, error), int(ttl_s * 1000))
            return True
        ttl = _ttl_ms(msg_or_id, default_ttl)
        if ttl is None:
            return False
        first = msg_or_id.source.kind == "channel"
        await self.write(result_id(msg_or_id), failure(where, error), ttl, first)
        return True


def _ttl_ms(msg: Message[Any], default_ttl: float | None) -> int | None:
    asked = msg.headers.get(TTL_HEADER)
    if asked is not None and asked.isdigit() and int(asked) > 0:
        return int(asked)
    return None if default_ttl is None else int(default_ttl * 1000)
