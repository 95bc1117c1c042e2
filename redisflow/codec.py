"""Wire format: payloads are JSON (orjson); list and sorted-set items carry a small envelope.

A list or sorted-set item written by redisflow is::

    b"\\x1e" + JSON [id, enqueued_at_ms, attempt, headers|null] + b"\\n" + JSON payload

The leading record separator never starts a JSON document, so an item pushed by another
client (``RPUSH emails '{"to": "a@b.c"}'``) is read as a bare payload. orjson never writes
a raw newline, so the first newline ends the header. The envelope also makes every item
unique, which a sorted set needs (equal members would collapse) and retries use (attempt).

Stream entries keep the payload in the field ``data`` and metadata in other fields; Pub/Sub
messages are bare JSON unless headers are given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import time
from typing import Any

import orjson
from pydantic import BaseModel

from .errors import ConfigError

MARK = b"\x1e"
_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS


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
    not redisflow's: wrong shape or types) and its payload."""
    if raw[:1] != MARK:
        return None, raw
    nl = raw.find(b"\n")
    if nl == -1:
        return None, raw
    try:
        head = orjson.loads(raw[1:nl])
    except orjson.JSONDecodeError:
        return None, raw[nl + 1 :]
    if not _valid_head(head):
        return None, raw[nl + 1 :]
    return head, raw[nl + 1 :]


def _valid_head(head: Any) -> bool:
    return (
        isinstance(head, list)
        and len(head) == 4
        and isinstance(head[0], str)
        and isinstance(head[1], int)
        and isinstance(head[2], int)
        and head[2] >= 1
        and (head[3] is None or isinstance(head[3], dict))
    )


def payload_of(raw: bytes) -> bytes:
    """The payload part of an item, without parsing the header (the hot path)."""
    if raw[:1] == MARK:
        nl = raw.find(b"\n")
        if nl != -1:
            return raw[nl + 1 :]
    return raw


def reenvelope(raw: bytes, attempt: int) -> bytes:
    """The same item with its attempt set to ``attempt`` (foreign items get an envelope)."""
    head, payload = split(raw)
    if head is None:
        return envelope(payload, content_id(raw), attempt=attempt)
    return envelope(payload, head[0], attempt=attempt, enqueued_ms=head[1], headers=head[3])


def content_id(raw: bytes) -> str:
    """A stable id for an item written without an envelope: the first 20 hex digits of the
    SHA-1 of its bytes, which ``recover.lua`` computes too (``redis.sha1hex``)."""
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:20]
