"""Hand-written redis-py loops: what the hardware and Redis allow, one message per round trip
and in batches. Each message is validated with ``Email.model_validate_json``. The batched
consumers pop destructively (at-most-once): a ceiling, not a like-for-like peer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import common
from common import Email, Run

with common.timed_import("redis.asyncio"):
    import redis.asyncio as aioredis

BATCH = 500


async def client(run: Run) -> aioredis.Redis:
    # redis-py 8 gives every command a 5 s socket timeout, blocking ones too
    # (docs/design.md, "Connections").
    return aioredis.Redis.from_url(run.url, socket_timeout=None)


async def fill_list(r: aioredis.Redis, items: list[Email]) -> None:
    for part in common.chunks(items, 10_000):
        await r.rpush("q", *(e.model_dump_json() for e in part))


async def fill_stream(r: aioredis.Redis, items: list[Email]) -> None:
    await r.xgroup_create("q", "g", id="0", mkstream=True)
    for part in common.chunks(items, 10_000):
        async with r.pipeline(transaction=False) as pipe:
            for e in part:
                pipe.xadd("q", {"data": e.model_dump_json()})
            await pipe.execute()


async def fill_zset(r: aioredis.Redis, items: list[Email]) -> None:
    for part in common.chunks(items, 10_000):
        await r.zadd("q", {e.model_dump_json(): e.n for e in part})


async def timed(run: Run, loop: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    await loop()
    return common.rate(run.n, time.perf_counter() - t0, concurrency="1")


async def queue(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_list(r, common.emails(run.n))

    async def loop() -> None:
        for _ in range(run.n):
            _, raw = await r.blpop(["q"], timeout=1)
            Email.model_validate_json(raw)

    return await timed(run, loop)


async def queue_batch(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_list(r, common.emails(run.n))

    async def loop() -> None:
        left = run.n
        while left:
            for raw in await r.lpop("q", BATCH) or ():
                Email.model_validate_json(raw)
                left -= 1

    return await timed(run, loop)


async def stream(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_stream(r, common.emails(run.n))

    async def loop() -> None:
        for _ in range(run.n):
            [[_, [(entry_id, fields)]]] = await r.xreadgroup("g", "c", {"q": ">"}, count=1)
            Email.model_validate_json(fields[b"data"])
            await r.xack("q", "g", entry_id)

    return await timed(run, loop)


async def stream_batch(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_stream(r, common.emails(run.n))

    async def loop() -> None:
        left = run.n
        while left:
            [[_, entries]] = await r.xreadgroup("g", "c", {"q": ">"}, count=BATCH)
            for _, fields in entries:
                Email.model_validate_json(fields[b"data"])
            await r.xack("q", "g", *(entry_id for entry_id, _ in entries))
            left -= len(entries)

    return await timed(run, loop)


async def priority(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_zset(r, common.emails(run.n))

    async def loop() -> None:
        for _ in range(run.n):
            _, raw, _ = await r.bzpopmin(["q"], timeout=1)
            Email.model_validate_json(raw)

    return await timed(run, loop)


async def priority_batch(run: Run) -> dict[str, Any]:
    r = await client(run)
    await fill_zset(r, common.emails(run.n))

    async def loop() -> None:
        left = run.n
        while left:
            for raw, _ in await r.zpopmin("q", BATCH):
                Email.model_validate_json(raw)
                left -= 1

    return await timed(run, loop)


async def pubsub(run: Run) -> dict[str, Any]:
    tally = common.Tally(run.n)
    r = await client(run)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe("c")

    async def listen() -> None:
        async for message in ps.listen():
            Email.model_validate_json(message["data"])
            tally.hit()

    async def payloads(c: aioredis.Redis) -> None:
        for part in common.chunks(common.emails(run.n), 10_000):
            await c.rpush(common.PAYLOADS, *(e.model_dump_json() for e in part))

    task = asyncio.create_task(listen())
    result = await common.pubsub(run, "c", tally, payloads)
    task.cancel()
    return {**result, "concurrency": "1"}


async def produce(run: Run) -> dict[str, Any]:
    r = await client(run)
    return await common.produce(lambda e: r.rpush("q", e.model_dump_json()), common.emails(run.n))


async def produce_batch(run: Run) -> dict[str, Any]:
    r = await client(run)
    items = common.emails(run.n)
    t0 = time.perf_counter()
    for part in common.chunks(items, BATCH):
        await r.rpush("q", *(e.model_dump_json() for e in part))
    return common.rate(run.n, time.perf_counter() - t0)


async def produce_concurrent(run: Run) -> dict[str, Any]:
    # The default pool raises MaxConnectionsError past 100 connections; a blocking pool
    # makes the 1,000 tasks wait for one of 32 connections instead (redisflow's default).
    pool = aioredis.BlockingConnectionPool.from_url(run.url, max_connections=32)
    r = aioredis.Redis(connection_pool=pool)
    items = common.emails(run.n)
    return await common.produce_concurrently(lambda e: r.rpush("q", e.model_dump_json()), items)


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    consumer, producer = await client(run), await client(run)

    async def loop() -> None:
        while True:
            reply = await consumer.blpop(["q"], timeout=0)
            probe.mark()
            Email.model_validate_json(reply[1])

    task = asyncio.create_task(loop())
    result = await common.latency(lambda e: producer.rpush("q", e.model_dump_json()), probe, run)
    task.cancel()
    return {**result, "concurrency": "1"}


async def request(run: Run) -> dict[str, Any]:
    """The hand-written RPC: the caller LPUSHes ``[reply key, payload]`` and BLPOPs its own
    reply key (a connection per waiting caller: a blocked connection serves nothing else);
    one server loop BLPOPs the queue and LPUSHes the reply, which expires."""
    import uuid

    import orjson

    server = await client(run)
    pool = aioredis.BlockingConnectionPool.from_url(
        run.url, max_connections=128, socket_timeout=None
    )
    callers = aioredis.Redis(connection_pool=pool)

    async def serve() -> None:
        while True:
            _, raw = await server.blpop(["q"], timeout=0)
            reply_key, payload = orjson.loads(raw)
            email = Email.model_validate(payload)
            await (
                server.pipeline(transaction=False)
                .lpush(reply_key, email.model_dump_json())
                .expire(reply_key, 60)
                .execute()
            )

    async def call(email: Email) -> Any:
        reply_key = f"reply:{uuid.uuid4().hex}"
        await callers.lpush("q", orjson.dumps([reply_key, email.model_dump(mode="json")]))
        _, raw = await callers.blpop([reply_key], timeout=30)
        return Email.model_validate_json(raw)

    task = asyncio.create_task(serve())
    result = await common.round_trips(call, run)
    task.cancel()
    return {**result, "concurrency": "1"}


async def start(run: Run) -> dict[str, Any]:
    first = common.First()
    r = await client(run)
    task: asyncio.Task[None] | None = None

    async def loop() -> None:
        while True:
            _, raw = await r.blpop(["q"], timeout=0)
            Email.model_validate_json(raw)
            first.hit()

    async def begin() -> None:
        nonlocal task
        task = asyncio.create_task(loop())

    async def stop() -> None:
        assert task is not None
        task.cancel()

    async def fill() -> None:
        await fill_list(r, common.emails(run.n))

    return await common.start(run, fill, begin, stop, first)


async def memory_batch(run: Run) -> dict[str, Any]:
    if run.fill:
        r = await client(run)
        for part in common.chunks(range(run.n), 10_000):
            await fill_list(r, [Email(to="m@example.com", subject="m", n=i) for i in part])
        return {}
    await common.fill_elsewhere(run)
    tally = common.Tally(run.n)
    r = await client(run)
    task: asyncio.Task[None] | None = None

    async def loop() -> None:
        while True:
            for raw in await r.lpop("q", BATCH) or ():
                Email.model_validate_json(raw)
                tally.hit()

    async def start() -> None:
        nonlocal task
        task = asyncio.create_task(loop())

    async def stop() -> None:
        assert task is not None
        task.cancel()

    result = await common.memory(start, stop, tally, run)
    return {**result, "concurrency": "1"}


CASES = {
    "queue": queue,
    "queue_batch": queue_batch,
    "stream": stream,
    "stream_batch": stream_batch,
    "priority": priority,
    "priority_batch": priority_batch,
    "pubsub": pubsub,
    "produce": produce,
    "produce_batch": produce_batch,
    "produce_concurrent": produce_concurrent,
    "latency": latency,
    "request": request,
    "memory_batch": memory_batch,
    "start": start,
}

if __name__ == "__main__":
    common.main(CASES)
