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
