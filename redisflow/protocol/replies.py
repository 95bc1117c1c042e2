"""Helpers to read Redis's raw (RESP2) replies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def pairs(flat: list[Any]) -> Iterator[tuple[Any, Any]]:
    """A flat ``[k1, v1, k2, v2...]`` reply as pairs."""
    return zip(flat[::2], flat[1::2], strict=True)


def mapping(flat: list[Any]) -> dict[Any, Any]:
    """A flat ``[k1, v1, k2, v2...]`` reply (HGETALL, XINFO...) as a dict."""
    return dict(pairs(flat))


def text(value: bytes | str) -> str:
    """A reply value as text."""
    return value.decode() if isinstance(value, bytes) else value


def info(reply: bytes) -> dict[str, str]:
    """An ``INFO`` reply as a dict of its ``field:value`` lines."""
    found: dict[str, str] = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        field, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            found[field] = value.strip()
    return found


#: The command that measures a key of each Redis type (``memory``, ``stats``).
LENGTH = {"list": "LLEN", "zset": "ZCARD", "stream": "XLEN", "set": "SCARD", "hash": "HLEN",
          "string": "STRLEN"}  # fmt: skip
