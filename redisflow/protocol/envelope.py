"""The envelope of list and sorted-set items, and the JSON codec of payloads (orjson).

A list or sorted-set item written by redisflow is::

    b"\\x1e" + JSON [id, enqueued_at_ms, attempt, headers|null] + b"\\n" + JSON payload

The leading record separator never starts a JSON document, so an item pushed by another
client (``RPUSH emails '{"to": "a@b.c"}'``) is read as a bare payload. orjson never writes
a raw newline, so the first newline ends the header. The envelope also makes every item
unique, which a sorted set needs (equal members would collapse) and retries use (attempt).

A header that is not exactly redisflow's (wrong shape, types or ranges: an id with quotes or
escapes, a time outside 0..10**15 ms, an attempt outside 1..10**9, headers that are not a
flat map of strings) is not trusted: the item is read as a foreign one, whose payload is
what follows the first newline. ``recover.lua`` applies the same rules when it counts the
deliveries of a dead worker's items (docs/security.md, "Trust boundary").

Stream entries keep the payload in the field ``data`` and metadata in other fields; Pub/Sub
messages are bare JSON unless headers are given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel

from ..errors import ConfigError

MARK = b"\x1e"
_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS
MAX_TIME_MS = 10**15  # recover.lua: at most 15 digits
MAX_ATTEMPT = 10**9  # recover.lua: at most 9 digits


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(value: Any) -> bytes:
    """Encode a payload (pydantic model, dataclass, or JSON-serializable value) as JSON."""
    if isinstance(value, BaseModel):
        return value.__pydantic_serializer__.to_json(value)
    try:
        return orjson.dumps(value, default=_default, option=_OPTS)
    except TypeError as exc:
        raise ConfigError(f"cannot encode payload: {exc}") from None


def encode_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` checked to be a flat map of strings (None or empty: None)."""
    if not headers:
        return None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"headers must map strings to strings, got {headers!r}")
    return headers


_ids = itertools.count(1)
_node = os.urandom(5).hex()


def new_id() -> str:
    """A message id unique across processes: a random node part and a counter."""
    return f"{_node}{next(_ids):x}"


def now_ms() -> int:
    """Wall-clock time in milliseconds."""
    return time.time_ns() // 1_000_000


def envelope(
    payload: bytes,
    msg_id: str,
    *,
    attempt: int = 1,
    enqueued_ms: int | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Wrap an encoded payload in the list/sorted-set envelope."""
    head = orjson.dumps([msg_id, enqueued_ms or now_ms(), attempt, headers])
    return b"".join((MARK, head, b"\n", payload))


def split(raw: bytes) -> tuple[list[Any] | None, bytes]:
    """Split an item into its envelope header (None for a foreign item, or a header that is
    not redisflow's) and its payload."""
    if raw[:1] != MARK:
        return None, raw
    nl = raw.find(b"\n")
    if nl == -1:
        return None, raw
    try:
        head = orjson.loads(raw[1:nl])
    except orjson.JSONDecodeError:
        return None, raw[nl + 1 :]
    if not valid_head(head, raw[1:nl]):
        return None, raw[nl + 1 :]
    return head, raw[nl + 1 :]


def valid_head(head: Any, text: bytes) -> bool:
    """Whether a decoded header (``text`` before decoding) is what ``envelope`` writes."""
    return (
        isinstance(head, list)
        and len(head) == 4
        and isinstance(head[0], str)
        and text.startswith(b'["%s",' % head[0].encode())  # no escapes in the id
        and type(head[1]) is int
        and 0 <= head[1] < MAX_TIME_MS
        and type(head[2]) is int
        and 1 <= head[2] < MAX_ATTEMPT
        and (head[3] is None or _flat_strings(head[3]))
    )


def _flat_strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def payload_of(raw: bytes) -> bytes:
    """The payload part of an item, without parsing the header (the hot path)."""
    if raw[:1] == MARK:
        nl = raw.find(b"\n")
        if nl != -1:
            return raw[nl + 1 :]
    return raw


def reenvelope(
    raw: bytes,
    attempt: int,
    *,
    payload: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The same item with its attempt set to ``attempt`` (foreign items get an envelope),
    and with ``payload`` and ``headers`` instead of its own when given (``{}``: none)."""
    head, own = split(raw)
    payload = own if payload is None else payload
    if head is None:
        return envelope(payload, content_id(raw), attempt=attempt, headers=headers or None)
    headers = head[3] if headers is None else encode_headers(headers)
    return envelope(payload, head[0], attempt=attempt, enqueued_ms=head[1], headers=headers)


def content_id(raw: bytes) -> str:
    """A stable id for an item written without an envelope: the first 20 hex digits of the
    SHA-1 of its bytes, which ``recover.lua`` computes too (``redis.sha1hex``)."""
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:20]


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """Headers stored as JSON by another client (a stream field): a flat map of strings, or
    none at all when they are anything else."""
    if not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return parsed if _flat_strings(parsed) else {}


def new_item(data: Any, headers: dict[str, str] | None = None) -> tuple[str, bytes]:
    """Encode one payload as a list/sorted-set item: its new id, and the item."""
    msg_id = new_id()
    return msg_id, envelope(encode(data), msg_id, headers=encode_headers(headers))


def pack_items(
    items: Iterable[Any], headers: dict[str, str] | None = None
) -> tuple[list[str], list[bytes]]:
    """Encode payloads as list/sorted-set items (each with ``headers``): their new ids, and
    the items."""
    ids: list[str] = []
    packed: list[bytes] = []
    head = encode_headers(headers)
    for item in items:
        msg_id = new_id()
        ids.append(msg_id)
        packed.append(envelope(encode(item), msg_id, headers=head))
    return ids, packed


def xadd(
    stream: str,
    data: Any,
    headers: dict[str, str] | None = None,
    maxlen: int | None = None,
    minid: str | None = None,
    *,
    trim: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """The XADD of a stream entry: the payload in the field ``data``, headers as JSON;
    trimmed by ``maxlen``/``minid`` (or ``trim``, their ``trim_args`` checked already)."""
    fields = (
        ("data", encode(data), "headers", encode(headers)) if headers else ("data", encode(data))
    )
    if trim is None:
        trim = trim_args(maxlen, minid)
    return ("XADD", stream, *trim, "*", *fields)


_STREAM_ID = re.compile(r"\d+(-\d+)?")


def trim_args(maxlen: int | None, minid: str | None) -> tuple[Any, ...]:
    """The XADD trimming arguments, checked here: Redis would refuse bad ones only after
    an earlier write of the same call."""
    if maxlen is not None and minid is not None:
        raise ConfigError("give maxlen or minid, not both")
    if maxlen is not None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0:
            raise ConfigError(f"maxlen must be an int >= 0, got {maxlen!r}")
        return ("MAXLEN", "~", maxlen)
    if minid is not None:
        if not isinstance(minid, str) or not _STREAM_ID.fullmatch(minid):
            raise ConfigError(f"minid must be a stream id such as '1700000000000-0': {minid!r}")
        return ("MINID", "~", minid)
    return ()
