"""Fuzzing what a foreign client can write: envelope headers (id, time, attempt, headers),
payloads, and stream fields, generated from a fixed seed (a failure replays). Whatever comes
in, every item is handled or dead-lettered (counted), the worker lives on, and a channel
keeps its subscription."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from redisflow import Message
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind, by_kind

pytestmark = pytest.mark.anyio

SEED = 14
N = 200


def scalar(rng: random.Random) -> Any:
    """A JSON scalar of a shape redisflow may not expect."""
    return rng.choice(
        [
            0, -1, 1, 2**31, 2**53 + 1, 2**64, 10**20, -(10**18), 99999999999999999,
            1.5, -0.0, 1e308, True, False, None, "", "x", '"', "\\", "\u0000", "é\u2028",
            "a" * rng.randint(0, 300), str(rng.random()),
        ]
    )  # fmt: skip


def structure(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value: scalars, lists and maps, sometimes nested hundreds deep."""
    roll = rng.random()
    if roll < 0.05:
        deep: Any = rng.choice([[], {}, "x"])
        for _ in range(rng.randint(100, 400)):
            deep = [deep] if rng.random() < 0.5 else {"k": deep}
        return deep
    if depth > 3 or roll < 0.5:
        return scalar(rng)
    if roll < 0.75:
        return [structure(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(scalar(rng)): structure(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (RecursionError, ValueError):
        return b"[" * 500


def noise(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))


def header(rng: random.Random) -> bytes:
    """An envelope header: mostly four elements, each of a random shape."""
    roll = rng.random()
    if roll < 0.1:
        return noise(rng)
    if roll < 0.2:
        return dumps(structure(rng))
    fields: list[Any] = [
        rng.choice([structure(rng), "id-" + str(rng.random())]),
        rng.choice([structure(rng), 1_700_000_000_000, 99999999999999999]),
        rng.choice([structure(rng), 1, 3]),
        rng.choice([structure(rng), {"k": "v"}, None]),
    ]
    if rng.random() < 0.2:
        fields = fields[: rng.randint(0, 5)] + [structure(rng)] * rng.randint(0, 2)
    return dumps(fields)


def payload(rng: random.Random) -> bytes:
    return rng.choice([dumps(structure(rng)), noise(rng), b'{"ok": 1}', b""])


def item(rng: random.Random) -> bytes:
    """A list or sorted-set item: an envelope of random shape, or none, or noise."""
    roll = rng.random()
    if roll < 0.7:
        return b"\x1e" + header(rng) + rng.choice([b"\n", b"", b"\n\n", b"\r\n"]) + payload(rng)
    if roll < 0.85:
        return payload(rng)
    return b"\x1e" + noise(rng)


def fields(rng: random.Random) -> dict[bytes, bytes]:
    """Stream entry fields: ``data``, ``headers`` and others, each random or missing."""
    found: dict[bytes, bytes] = {}
    if rng.random() < 0.8:
        found[b"data"] = payload(rng)
    if rng.random() < 0.6:
        found[b"headers"] = rng.choice([dumps(structure(rng)), noise(rng), header(rng)])
    for _ in range(rng.randint(0 if found else 1, 3)):
        found[rng.choice([noise(rng), b"n", b"attempt", b"id"]) or b"f"] = payload(rng)
    return found


@by_kind([Kind("queue"), Kind("priority"), Kind("stream")])
async def test_fuzzed_items_are_each_handled_or_dead_lettered(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """N random items (a retry for some, to exercise re-enveloping their headers): each is
    handled or dead-lettered, and a well-formed message after them is handled."""
    rng = random.Random(f"{SEED}:{kind}")
    flow = make_flow(url, ns)
    name = kind.name(ns)
    handled: list[bytes] = []
    attempts: dict[bytes, int] = {}

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01, concurrency=32)
    async def handler(data: Any, msg: Message[Any]) -> None:
        assert isinstance(msg.headers, dict) and msg.attempt >= 1 and msg.id
        repr(msg.enqueued_at)
        attempts[msg.raw] = attempts.get(msg.raw, 0) + 1
        if data == "last":
            handled.append(b"last")
        elif rng.random() < 0.2:
            raise RuntimeError("fails, to be retried and maybe dead-lettered")
        else:
            handled.append(msg.raw)

    async with flow:
        if kind.kind == "stream":
            for _ in range(N):
                await r.xadd(name, fields(rng))
            sent = N
        else:
            items = {item(rng) for _ in range(N)}  # a sorted set keeps one of each
            for raw in items:
                await kind.push_raw(r, name, raw)
            sent = len(items)
        await kind.produce(flow, name, "last")

        async def settled() -> bool:
            return len(handled) + await flow.dlq(name).count() >= sent + 1

        await eventually(settled, within=30, what="each handled or dead-lettered")
        assert b"last" in handled
        assert len(handled) + await flow.dlq(name).count() == sent + 1


async def test_fuzzed_channel_messages_keep_the_subscription(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Random bytes and envelopes published to a channel: each handled or dead-lettered,
    and the subscription carries on."""
    rng = random.Random(f"{SEED}:channel")
    flow = make_flow(url, ns)
    name = f"{ns}.ch"
    handled: list[Any] = []

    @flow.on_channel(name, concurrency=32)
    async def handler(data: Any) -> None:
        handled.append(data)

    async with flow:
        for _ in range(N):
            assert await r.publish(name, item(rng)) == 1
        assert await r.publish(name, b'"last"') == 1

        async def settled() -> bool:
            return len(handled) + await flow.dlq(name).count() >= N + 1

        await eventually(settled, within=30, what="each handled or dead-lettered")
        assert "last" in handled
        assert await r.publish(name, b'"after"') == 1
        await eventually(lambda: "after" in handled, what="still subscribed")
