"""Poison messages and bad input: each ends in the dead letters with a readable reason, and
the messages behind it keep flowing (a poison message must never stop a worker)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from redisflow import Flow, Message
from tests.support.flows import eventually, make_flow
from tests.support.kinds import ALL, Kind, by_kind

pytestmark = pytest.mark.anyio

BIG = 10 * 1024 * 1024
GARBAGE = bytes(range(255, -1, -1)) * 4  # not UTF-8, not JSON, no envelope


class Job(BaseModel):
    """A job; a note longer than 1000 characters is invalid."""

    n: int
    note: str = Field("", max_length=1000)
    mode: Literal["ok", "raise", "hang"] = "ok"


@by_kind([k for k in ALL if not k.at_most_once])
async def test_poison_messages_are_dead_lettered_and_the_rest_flows(
    kind: Kind,
    url: str,
    ns: str,
    r: aioredis.Redis,
    figures: Callable[..., None],
) -> None:
    """Invalid JSON, a payload that fails validation, a 10 MB payload, binary garbage, a
    handler that always raises and one that hangs (``timeout=`` cancels it) each end in the
    dead letters with a readable reason; with one handler at a time, the 100 good messages
    around them are all handled."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    good: list[int] = []
    calls: dict[int, int] = {}

    @kind.on(flow, name, concurrency=1, max_attempts=2, retry_delay=0.05, timeout=0.3)
    async def handler(job: Job) -> None:
        calls[job.n] = calls.get(job.n, 0) + 1
        if job.mode == "raise":
            raise RuntimeError(f"job {job.n} always fails")
        if job.mode == "hang":
            await anyio.sleep(3600)
        good.append(job.n)

    expected = {
        b'{"n": 1001, "note": "cut short': "Invalid JSON: EOF while parsing",
        b'{"n": "one thousand and two"}': "Input should be a valid integer",
        b'{"n": 1003, "note": "' + b"x" * BIG + b'"}': "at most 1000 characters",
        GARBAGE: "Invalid JSON: expected value",
        b'{"n": 1005, "mode": "raise"}': "RuntimeError: job 1005 always fails",
        b'{"n": 1006, "mode": "hang"}': "handler timed out after 0.3s",
    }
    async with flow:
        await kind.produce_many(flow, name, [{"n": n} for n in range(50)])
        for raw in expected:
            await kind.push_raw(r, name, raw)
        await kind.produce_many(flow, name, [{"n": n} for n in range(50, 100)])
        await eventually(lambda: len(good) == 100, within=30, what="the good messages")
        await eventually(
            lambda: _dead(flow, name, len(expected)), within=30, what="the dead letters"
        )
        dead = await flow.dlq(name).list()
        await eventually(lambda: _settled(kind, r, flow, name), what="nothing left held")
    assert sorted(good) == list(range(100))
    assert len(dead) == len(expected)
    for raw, reason in expected.items():
        matching = [entry for entry in dead if reason in entry.error]
        assert len(matching) == 1, (reason, [entry.error[:200] for entry in dead])
        entry = matching[0]
        assert entry.data.decode("utf-8", "replace") == raw.decode(
            "utf-8", "replace"
        )  # the bytes as they came
        assert len(entry.error) < 1000, "the reason should be short, not the payload"
        assert entry.handler == handler.__qualname__
    assert calls[1005] == calls[1006] == 2  # every attempt made, then given up
    figures(kind=str(kind), dead_letters=len(dead), good_handled=len(good))


async def _dead(flow: Flow, name: str, n: int) -> bool:
    return len(await flow.dlq(name).list()) >= n


async def _settled(kind: Kind, r: aioredis.Redis, flow: Flow, name: str) -> bool:
    return await kind.held(r, flow, name) == 0


@by_kind([Kind("queue"), Kind("priority"), Kind("channel")])
async def test_malformed_envelope_does_not_kill_the_worker(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """An item that starts like redisflow's envelope but whose header has the wrong types
    is handled or dead-lettered, once, like any other item; the worker lives on and the
    messages behind it are handled."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    good: list[int] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.05)
    async def handler(job: Job, msg: Message[Job]) -> None:
        good.append(job.n)
        if job.n == 7:
            raise RuntimeError("fails, to be retried")

    async with flow:
        await kind.push_raw(r, name, b'\x1e["id", "not a time", "x", 5]\n{"n": 7}')
        await kind.produce(flow, name, {"n": 8})
        await eventually(lambda: 8 in good, what="the message behind it")
        await eventually(lambda: _dead(flow, name, 1), what="a dead letter")
        dead = await flow.dlq(name).list()
    assert sorted(good) in ([7, 7, 8], [7, 8], [8])  # attempts made before the verdict
    assert len(dead) == 1


async def test_stream_entries_with_binary_fields_or_bad_headers(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A stream entry written by another client with fields that are not UTF-8 is
    dead-lettered (its bytes escaped), one whose ``headers`` field is not JSON is handled
    without headers; the worker lives on."""
    flow = make_flow(url, ns)
    kind = Kind("stream")
    name = kind.name(ns)
    got: list[tuple[int, dict[str, str]]] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.05)
    async def handler(job: Job, msg: Message[Job]) -> None:
        got.append((job.n, msg.headers))

    async with flow:
        await r.xadd(name, {b"\xff\xfe": b"\x80 not utf-8"})
        await r.xadd(name, {"data": b'{"n": 1}', "headers": b"not json"})
        await kind.produce(flow, name, {"n": 2}, headers={"trace": "t"})
        await eventually(lambda: len(got) == 2, what="the messages behind")
        await eventually(lambda: _dead(flow, name, 1), what="the dead letter")
        dead = await flow.dlq(name).list()
    assert got == [(1, {}), (2, {"trace": "t"})]
    assert len(dead) == 1
    assert dead[0].error.startswith("undecodable payload: 'utf-8' codec can't decode")
    assert json.loads(dead[0].data.decode("utf-8", "replace")) == {"\\xff\\xfe": "\\x80 not utf-8"}


# -- hostile envelopes: every field another client can write -----------------------------

DEEP = "[" * 300 + "]" * 300
HOSTILE_HEADERS = [
    b'["x",99999999999999999,1,null]',  # a time past what datetime can hold
    b'["x",-5,1,null]',  # a negative time
    b'["x",1.5,1,null]',  # a float time
    b'["x",1,0,null]',  # attempt 0
    b'["x",1,99999999999,null]',  # attempt over a billion
    b'["x\\"y",1,1,null]',  # an id with an escaped quote
    b'["x",1,1,{"a":' + DEEP.encode() + b"}]",  # headers nested 300 deep
    b'["x",1,1,' + b"[" * 2000 + b"]" * 2000 + b"]",  # deeper than any JSON parser goes
    b'["x",1,1,{"a":1}]',  # a header value that is not a string
    b"[1,2,3,4]",  # wrong types
    b'["x",1,1,null,5]',  # five elements
    b"",  # an empty header
    b"\xff\xfe not json",
]


@by_kind([Kind("queue"), Kind("priority"), Kind("channel")])
async def test_hostile_envelopes_never_kill_a_worker(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """Every envelope field another client can write, out of range or of the wrong type:
    each item is delivered as a foreign one, retried and dead-lettered (the paths that
    re-encode the envelope and write its headers); the worker lives on."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    seen: list[int] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01)
    async def handler(job: Job, msg: Message[Job]) -> None:
        seen.append(job.n)
        assert msg.id and msg.attempt >= 1 and isinstance(msg.headers, dict)
        repr(msg.enqueued_at)
        if job.n < len(HOSTILE_HEADERS):
            raise RuntimeError("fails, to be retried and dead-lettered")

    async with flow:
        for n, head in enumerate(HOSTILE_HEADERS):
            await kind.push_raw(r, name, b"\x1e" + head + b'\n{"n": %d}' % n)
        await eventually(
            lambda: _dead(flow, name, len(HOSTILE_HEADERS)), within=15, what="all dead-lettered"
        )
        await kind.produce(flow, name, {"n": 99})
        await eventually(lambda: 99 in seen, what="the worker lives on")
        dead = await flow.dlq(name).list()
    assert sorted(json.loads(d.data)["n"] for d in dead) == list(range(len(HOSTILE_HEADERS)))
    assert all(d.attempts == 2 for d in dead), [(d.attempts, d.error) for d in dead]


async def test_hostile_stream_headers_never_kill_a_worker(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A stream entry's ``headers`` field, written by another client: nested, not a map,
    not strings, not JSON, not UTF-8. Handled without headers, retried, dead-lettered."""
    flow = make_flow(url, ns)
    kind = Kind("stream")
    name = kind.name(ns)
    bad = [DEEP.encode(), b"[1,2]", b'{"a": 1}', b"not json", b"\xff\xfe", b"[" * 2000]
    seen: list[tuple[int, dict[str, str]]] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01)
    async def handler(job: Job, msg: Message[Job]) -> None:
        seen.append((job.n, msg.headers))
        if job.n < len(bad):
            raise RuntimeError("fails")

    async with flow:
        for n, headers in enumerate(bad):
            await r.xadd(name, {"data": b'{"n": %d}' % n, "headers": headers})
        await eventually(lambda: _dead(flow, name, len(bad)), what="all dead-lettered")
        await r.xadd(name, {"data": b'{"n": 99}', "headers": b'{"ok": "yes"}'})
        await eventually(lambda: (99, {"ok": "yes"}) in seen, what="the worker lives on")
    assert all(headers == {} for n, headers in seen if n < len(bad))


@by_kind([Kind("queue"), Kind("priority")])
async def test_crash_recovery_reads_envelopes_as_the_worker_does(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """A dead worker's items come back with one delivery counted (``recover.lua``); Lua and
    Python agree on which envelopes are trusted, so a hostile header cannot make a message
    that kills its workers escape the count (it would crash-loop forever)."""
    from redisflow.protocol import scripts
    from redisflow.protocol.envelope import split

    flow = make_flow(url, ns)
    name = kind.name(ns)
    keys = flow.keys(name)
    mode = "zset" if kind.kind == "priority" else "list"
    trusted = b'\x1e["abc",1700000000000,3,{"k":"v"}]\n{"n": 1}'
    items = [trusted, *(b"\x1e" + head + b'\n{"n": 2}' for head in HOSTILE_HEADERS), b'{"n": 3}']
    batch = keys.batch("dead", 1)
    for i, item in enumerate(items):
        await (r.rpush(batch, i, item) if mode == "zset" else r.rpush(batch, item))
    await r.sadd(keys.batches("dead"), batch)
    await r.zadd(keys.leases, {"dead": 0})  # expired long ago
    call = scripts.recover(
        name, keys.leases, keys.batches("dead"), keys.batch("me", 1), keys.batches("me"),
        [batch], mode=mode, worker="dead", max_attempts=5,
    )  # fmt: skip
    try:
        moved = await flow.client.connector.run(call)
        back = await (r.zrange(name, 0, -1) if mode == "zset" else r.lrange(name, 0, -1))
    finally:
        await flow.aclose()
    assert moved[0] == len(items)
    attempts = []
    for raw in back:
        head, payload = split(raw)
        assert head is not None, raw  # every item now has a trusted envelope
        attempts.append((head[2], json.loads(payload)["n"]))
    assert attempts[0] == (4, 1)  # the trusted one: its attempt + 1, id and headers kept
    assert split(back[0])[0] == ["abc", 1700000000000, 4, {"k": "v"}]
    assert all(attempt == 2 for attempt, n in attempts[1:]), attempts  # foreign: 1 + 1
    assert [n for _, n in attempts] == [1, *[2] * len(HOSTILE_HEADERS), 3]
