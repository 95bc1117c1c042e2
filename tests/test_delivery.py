"""Delivery contract of the at-least-once sources: list queues, priority queues, streams.

Every behaviour is written once and runs against the three kinds through a small adapter
(``Src``): register a handler, produce one, produce many, push a foreign item with the raw
client, and count what is still in Redis.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Flow, Message, Reject, Retry, Source
from redisflow.message import Kind

pytestmark = pytest.mark.anyio

F = TypeVar("F", bound=Callable[..., Any])
GROUP = "g"
KINDS = ["queue", "priority", "stream"]
REPO = Path(__file__).resolve().parent.parent


class Item(BaseModel):
    """The payload model used by most tests."""

    sku: str
    qty: int


# -- helpers ---------------------------------------------------------------------------------


async def eventually(
    pred: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within: float = 5.0,
    what: str = "condition",
) -> None:
    """Poll ``pred`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = pred()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(0.02)


def make_flow(url: str, ns: str, **kwargs: Any) -> Flow:
    """A flow with short timings, under the test's prefix."""
    options: dict[str, Any] = dict(lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)
    options.update(kwargs)
    return Flow(url, prefix=ns, **options)


@dataclass(frozen=True)
class Src:
    """One at-least-once source under test: its kind and its Redis key."""

    kind: Kind
    name: str

    def on(self, flow: Flow, **options: Any) -> Callable[[F], F]:
        """The decorator registering a handler for this source."""
        if self.kind == "queue":
            return flow.on_queue(self.name, **options)
        if self.kind == "priority":
            return flow.on_priority(self.name, **options)
        return flow.on_stream(self.name, group=GROUP, **options)

    @property
    def source(self) -> Source:
        """The Source a handler of this kind sees in its Message."""
        return Source(self.kind, self.name, GROUP if self.kind == "stream" else None)

    async def send(self, flow: Flow, data: Any, *, headers: dict[str, str] | None = None) -> str:
        """Produce one message; returns the id the producer gave."""
        if self.kind == "queue":
            return await flow.enqueue(self.name, data, headers=headers)
        if self.kind == "priority":
            return await flow.enqueue_priority(self.name, data, headers=headers)
        return await flow.append(self.name, data, headers=headers)

    async def send_many(self, flow: Flow, items: list[Any]) -> list[str]:
        """Produce many messages with the batch producer."""
        if self.kind == "queue":
            return await flow.enqueue_many(self.name, items)
        if self.kind == "priority":
            return await flow.enqueue_priority_many(self.name, items)
        return await flow.append_many(self.name, items)

    async def push_raw(self, r: aioredis.Redis, raw: bytes) -> None:
        """Write an item as another client would, without redisflow's envelope."""
        if self.kind == "queue":
            await r.rpush(self.name, raw)
        elif self.kind == "priority":
            await r.zadd(self.name, {raw: 0})
        else:
            await r.xadd(self.name, {"data": raw})

    async def in_redis(self, r: aioredis.Redis) -> int:
        """Messages still held by Redis: queued, or (streams) pending or not yet read."""
        if self.kind == "queue":
            return int(await r.llen(self.name))
        if self.kind == "priority":
            return int(await r.zcard(self.name))
        if not await r.exists(self.name):
            return 0
        groups = await r.xinfo_groups(self.name)
        if not groups:
            return int(await r.xlen(self.name))
        group = groups[0]
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        unread = len(await r.xrange(self.name, min=f"({last}") or [])
        return int(group["pending"]) + unread

    async def pending(self, r: aioredis.Redis) -> int:
        """XPENDING summary count (streams); 0 for the other kinds."""
        if self.kind != "stream":
            return 0
        summary = await r.xpending(self.name, GROUP)
        return int(summary["pending"])


@pytest.fixture(params=KINDS)
def src(request: pytest.FixtureRequest, ns: str) -> Src:
    kind: Kind = request.param
    return Src(kind, f"{ns}:{kind}")


@pytest.fixture(params=["queue", "priority"])
def delayable(request: pytest.FixtureRequest, ns: str) -> Src:
    kind: Kind = request.param
    return Src(kind, f"{ns}:{kind}")


async def aux_keys(r: aioredis.Redis, ns: str, src: Src) -> set[str]:
    """Keys under the prefix that should not exist once a flow is idle or stopped.

    Allowed: the stream itself, and a priority queue's sequence counter and wake stream.
    """
    tag = f"{ns}:{{{src.name}}}"
    allowed = {src.name} if src.kind == "stream" else set()
    if src.kind == "priority":
        allowed |= {f"{tag}:seq", f"{tag}:wake"}
    keys = {k.decode() if isinstance(k, bytes) else k for k in await r.keys(f"{ns}:*")}
    return keys - allowed


async def count_dead(flow: Flow, name: str) -> int:
    """How many dead letters ``name`` has (call while the flow runs)."""
    return len(await flow.dead_letters(name))


# -- 1. exactly once, nothing left ----------------------------------------------------------


async def test_every_message_handled_once_and_nothing_left(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """500 batch-produced + 5 single messages are each handled once; Redis is left clean."""
    flow = make_flow(url, ns)
    seen: list[int] = []

    @src.on(flow, concurrency=32)
    async def handler(payload: dict[str, int]) -> None:
        seen.append(payload["n"])

    sent = list(range(500)) + list(range(1000, 1005))
    async with flow:
        await src.send_many(flow, [{"n": n} for n in range(500)])
        for n in range(1000, 1005):
            await src.send(flow, {"n": n})
        await eventually(lambda: len(seen) >= len(sent), 10, "all messages handled")
        # While idle, finished batches are acked: no in-flight batch lists remain.
        await eventually(lambda: _no_batch_lists(r, ns), 3, "in-flight batch lists to be deleted")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
        dead_count = await count_dead(flow, src.name)
    assert Counter(seen) == Counter(sent)
    assert await src.in_redis(r) == 0
    assert await src.pending(r) == 0
    assert await aux_keys(r, ns, src) == set()
    assert dead_count == 0


async def _no_batch_lists(r: aioredis.Redis, ns: str) -> bool:
    return not await r.keys(f"{ns}:*:proc:*")


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


# -- 2. payload validation --------------------------------------------------------------------


async def test_invalid_payloads_are_dead_lettered_at_once(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """An invalid payload and a non-JSON item go to the dead letters once; others flow on."""
    flow = make_flow(url, ns)
    seen: list[str] = []
    calls = 0

    @src.on(flow, concurrency=1, retry_delay=0.05)
    async def handler(item: Item) -> None:
        nonlocal calls
        calls += 1
        assert isinstance(item, Item)
        seen.append(item.sku)

    async with flow:
        await src.send(flow, Item(sku="a", qty=1))
        await src.send(flow, {"sku": "bad", "qty": "many"})
        await src.push_raw(r, b"not json {")
        await src.send(flow, Item(sku="b", qty=2))
        await src.send(flow, {"sku": "c", "qty": 3})
        await eventually(lambda: len(seen) >= 3, 5, "valid messages handled")
        await eventually(lambda: _dead_at_least(flow, src.name, 2), 5, "two dead letters")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead = await flow.dead_letters(src.name)
    assert sorted(seen) == ["a", "b", "c"]
    assert calls == 3
    assert len(dead) == 2, dead
    by_data = {d["data"]: d for d in dead}
    invalid = next(d for data, d in by_data.items() if "bad" in data)
    assert "qty" in invalid["error"] and "invalid payload" in invalid["error"], invalid
    assert invalid["attempts"] == "1"
    garbage = by_data["not json {"]
    assert "json" in garbage["error"].lower(), garbage
    assert garbage["attempts"] == "1"
    for d in dead:
        assert d["handler"] == handler.__qualname__
        assert d["source"] == str(src.source)


async def _dead_at_least(flow: Flow, name: str, n: int) -> bool:
    return await count_dead(flow, name) >= n


# -- 3. foreign items --------------------------------------------------------------------------


async def test_foreign_items_are_consumed_like_produced_ones(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """Items pushed by other clients are validated, retried and dead-lettered like ours."""
    flow = make_flow(url, ns)
    seen: list[tuple[str, int, int]] = []

    @src.on(flow, retry_delay=0.05)
    async def handler(item: Item, msg: Message[Item]) -> None:
        assert isinstance(item, Item)
        if item.sku == "flaky" and msg.attempt == 1:
            raise RuntimeError("first attempt fails")
        seen.append((item.sku, item.qty, msg.attempt))

    foreign_bad = b'{"sku": "x", "qty": "lots"}'
    async with flow:
        await src.push_raw(r, b'{"sku": "f1", "qty": 1}')
        await src.push_raw(r, b'{"sku": "f2", "qty": 2}')
        await src.push_raw(r, b'{"sku": "flaky", "qty": 3}')
        await src.push_raw(r, foreign_bad)
        await src.send(flow, Item(sku="ours", qty=4))
        await eventually(lambda: len(seen) >= 4, 5, "foreign and own items handled")
        await eventually(lambda: _dead_at_least(flow, src.name, 1), 5, "a dead letter")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead = await flow.dead_letters(src.name)
    assert sorted(seen) == [("f1", 1, 1), ("f2", 2, 1), ("flaky", 3, 2), ("ours", 4, 1)]
    assert len(dead) == 1, dead
    assert dead[0]["data"] == foreign_bad.decode()
    assert dead[0]["attempts"] == "1"
    assert "qty" in dead[0]["error"]


# -- 4. retry then success ---------------------------------------------------------------------


async def test_failing_handler_is_retried_until_it_succeeds(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """A handler failing twice succeeds on attempt 3; attempts count 1, 2, 3; no dead letter."""
    flow = make_flow(url, ns)
    attempts: list[int] = []
    handled: list[int] = []

    @src.on(flow, max_attempts=5, retry_delay=0.05)
    async def handler(item: Item, msg: Message[Item]) -> None:
        attempts.append(msg.attempt)
        if msg.attempt < 3:
            raise RuntimeError(f"fail {msg.attempt}")
        handled.append(item.qty)

    async with flow:
        await src.send(flow, Item(sku="r", qty=7))
        await eventually(lambda: handled == [7], 5, "success on the third attempt")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead_count = await count_dead(flow, src.name)
    assert attempts == [1, 2, 3]
    assert dead_count == 0
    assert await aux_keys(r, ns, src) == set()


# -- 5. max attempts ---------------------------------------------------------------------------


async def test_always_failing_handler_is_dead_lettered_after_max_attempts(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """After max_attempts=3 failures the message is dead-lettered with its error and handler."""
    flow = make_flow(url, ns)
    calls: list[int] = []

    @src.on(flow, max_attempts=3, retry_delay=0.05)
    async def always_fails(item: Item, msg: Message[Item]) -> None:
        calls.append(msg.attempt)
        raise RuntimeError(f"boom {item.sku}")

    async with flow:
        await src.send(flow, Item(sku="z", qty=1))
        await eventually(lambda: _dead_at_least(flow, src.name, 1), 5, "a dead letter")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead = await flow.dead_letters(src.name)
    assert calls == [1, 2, 3]
    assert len(dead) == 1, dead
    letter = dead[0]
    assert letter["attempts"] == "3"
    assert "RuntimeError" in letter["error"] and "boom z" in letter["error"], letter
    assert letter["handler"] == always_fails.__qualname__
    assert letter["source"] == str(src.source)
    # The dead letter keeps the payload as produced (as streams do), not redisflow's envelope.
    assert letter["data"] == Item(sku="z", qty=1).model_dump_json(), letter["data"]


# -- 6. Reject ---------------------------------------------------------------------------------


async def test_reject_dead_letters_at_once(url: str, r: aioredis.Redis, ns: str, src: Src) -> None:
    """``raise Reject("nope")`` dead-letters after one call, with the reason."""
    flow = make_flow(url, ns)
    calls = 0

    @src.on(flow, max_attempts=5, retry_delay=0.05)
    async def handler(item: Item) -> None:
        nonlocal calls
        calls += 1
        raise Reject("nope")

    async with flow:
        await src.send(flow, Item(sku="j", qty=1))
        await eventually(lambda: _dead_at_least(flow, src.name, 1), 5, "a dead letter")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead = await flow.dead_letters(src.name)
    assert calls == 1
    assert len(dead) == 1
    assert "nope" in dead[0]["error"]
    assert dead[0]["attempts"] == "1"


# -- 7. Retry(delay) ---------------------------------------------------------------------------


async def test_retry_signal_delays_the_next_attempt(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """``raise Retry(delay=0.3)`` makes the second attempt come no sooner than 0.3 s later."""
    flow = make_flow(url, ns)
    times: list[float] = []

    @src.on(flow, max_attempts=5, retry_delay=0.05)
    async def handler(item: Item, msg: Message[Item]) -> None:
        times.append(time.monotonic())
        if msg.attempt == 1:
            raise Retry(delay=0.3)

    async with flow:
        await src.send(flow, Item(sku="d", qty=1))
        await eventually(lambda: len(times) >= 2, 5, "the second attempt")
        dead_count = await count_dead(flow, src.name)
    assert len(times) == 2
    gap = times[1] - times[0]
    assert gap >= 0.3 - 0.02, f"second attempt after {gap:.3f}s"
    assert gap < 2.0, f"second attempt after {gap:.3f}s"
    assert dead_count == 0


# -- 8. timeout --------------------------------------------------------------------------------


async def test_handler_timeout_counts_as_a_failed_attempt(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """A handler exceeding ``timeout`` is cancelled; after max_attempts=2 it is dead-lettered."""
    flow = make_flow(url, ns)
    calls = 0
    cancelled = 0

    @src.on(flow, timeout=0.2, max_attempts=2, retry_delay=0.05)
    async def sleeper(item: Item) -> None:
        nonlocal calls, cancelled
        calls += 1
        try:
            await anyio.sleep(10)
        except BaseException:
            cancelled += 1
            raise

    start = time.monotonic()
    async with flow:
        await src.send(flow, Item(sku="t", qty=1))
        await eventually(lambda: _dead_at_least(flow, src.name, 1), 4, "a dead letter")
        elapsed = time.monotonic() - start
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
        await eventually(lambda: _zero(src.in_redis(r)), 3, "nothing left in Redis")
        dead = await flow.dead_letters(src.name)
    assert elapsed < 4
    assert calls == 2
    assert cancelled == 2
    assert len(dead) == 1
    assert "timed out" in dead[0]["error"] or "timeout" in dead[0]["error"].lower(), dead[0]
    assert dead[0]["attempts"] == "2"


# -- 9. the Message envelope -------------------------------------------------------------------


async def test_message_envelope(url: str, r: aioredis.Redis, ns: str, src: Src) -> None:
    """A ``Message[Model]`` parameter gets id, attempt, source, enqueued_at, headers, payload."""
    flow = make_flow(url, ns)
    got: list[tuple[Item, Message[Item]]] = []

    @src.on(flow)
    async def handler(msg: Message[Item], item: Item) -> None:
        got.append((item, msg))

    async with flow:
        before = datetime.now(UTC)
        sent_id = await src.send(flow, Item(sku="m", qty=9), headers={"trace": "abc"})
        after = datetime.now(UTC)
        await eventually(lambda: len(got) >= 1, 5, "the message")
    assert len(got) == 1
    item, msg = got[0]
    assert isinstance(msg, Message)
    assert item == Item(sku="m", qty=9)
    assert msg.payload == item
    assert msg.id == sent_id
    assert msg.attempt == 1
    assert msg.source == src.source
    assert msg.source.kind == src.kind and msg.source.name == src.name
    assert isinstance(msg.enqueued_at, datetime)
    assert msg.enqueued_at.tzinfo is not None
    slack = timedelta(seconds=1)
    assert before - slack <= msg.enqueued_at <= after + slack, (before, msg.enqueued_at)
    assert msg.headers == {"trace": "abc"}


# -- 10. graceful shutdown ---------------------------------------------------------------------


async def test_graceful_shutdown_hands_back_unfinished_messages(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """Stopping early: each message is handled once or left in Redis for the next flow."""
    handled: list[int] = []
    total = 40

    def register(flow: Flow) -> None:
        @src.on(flow, concurrency=4)
        async def slow(payload: dict[str, int]) -> None:
            await anyio.sleep(0.3)
            handled.append(payload["n"])

    first = make_flow(url, ns, name="first")
    register(first)
    async with first:
        await src.send_many(first, [{"n": n} for n in range(total)])
        await eventually(lambda: len(handled) >= 5, 5, "a few messages handled")
    first_count = len(handled)
    assert 5 <= first_count < total, "the flow should have stopped early"
    assert len(set(handled)) == first_count, Counter(handled)
    assert first_count + await src.in_redis(r) == total
    assert not await r.keys(f"{ns}:*:proc:*"), "the stopped flow left batch lists"

    second = make_flow(url, ns, name="second")
    register(second)
    async with second:
        await eventually(lambda: len(handled) >= total, 15, "the rest handled by a new flow")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
    dupes = {n: c for n, c in Counter(handled).items() if c > 1}
    assert not dupes, f"handled more than once: {dupes}"
    assert sorted(handled) == list(range(total))
    assert await src.in_redis(r) == 0


# -- 11. crash safety --------------------------------------------------------------------------

WORKER = """
import asyncio
import sys

import redis.asyncio as aioredis

from redisflow import Flow

URL, NS, KIND, NAME = sys.argv[1:5]


async def main() -> None:
    raw = aioredis.Redis.from_url(URL)
    flow = Flow(URL, prefix=NS, lease=2, claim_idle=2, block_timeout=0.5)

    async def handle(payload: dict[str, int]) -> None:
        await raw.rpush(f"{NS}:done", payload["n"])
        await asyncio.sleep(0.005)

    if KIND == "queue":
        flow.on_queue(NAME, concurrency=8)(handle)
    elif KIND == "priority":
        flow.on_priority(NAME, concurrency=8)(handle)
    else:
        flow.on_stream(NAME, group="g", concurrency=8)(handle)
    await flow.run()


asyncio.run(main())
"""


def spawn_worker(
    tmp_path: Path, log_path: Path, url: str, ns: str, src: Src
) -> subprocess.Popen[bytes]:
    """Start the worker script in a subprocess, output to ``log_path``."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(script), url, ns, src.kind, src.name],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_kill_9_loses_nothing(
    url: str, r: aioredis.Redis, ns: str, src: Src, tmp_path: Path
) -> None:
    """A worker killed with SIGKILL mid-run: a new worker handles every message it did not."""
    total = 2000
    done_key = f"{ns}:done"
    producer = make_flow(url, ns)
    async with producer:
        for start in range(0, total, 500):
            await src.send_many(producer, [{"n": n} for n in range(start, start + 500)])

    log_path = tmp_path / "worker.log"
    proc = spawn_worker(tmp_path, log_path, url, ns, src)
    try:

        async def started() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}: {log_path.read_text()}")
            return int(await r.llen(done_key)) >= 100

        await eventually(started, 15, "the worker to handle some messages")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    at_kill = int(await r.llen(done_key))
    assert at_kill < total, "the worker finished before it was killed: test is vacuous"

    finisher = make_flow(url, ns, name="finisher")

    @src.on(finisher, concurrency=16)
    async def handle(payload: dict[str, int]) -> None:
        await r.rpush(done_key, payload["n"])

    async def all_done() -> bool:
        # Every id handled, and the redelivered duplicates drained too.
        seen = {int(x) for x in await r.lrange(done_key, 0, -1)}
        return len(seen) >= total and await src.in_redis(r) == 0

    async with finisher:
        await eventually(all_done, 20, "every message handled after the crash")
    done = [int(x) for x in await r.lrange(done_key, 0, -1)]
    missing = set(range(total)) - set(done)
    duplicates = len(done) - len(set(done))
    assert not missing, f"lost {len(missing)} messages (duplicates: {duplicates})"
    assert set(done) == set(range(total)), f"duplicates: {duplicates}"
    assert await src.in_redis(r) == 0


# -- 12. delayed enqueue -----------------------------------------------------------------------


async def test_delayed_enqueue(url: str, r: aioredis.Redis, ns: str, delayable: Src) -> None:
    """``delay=0.5`` holds a message back for 0.5 s, then it is handled."""
    flow = make_flow(url, ns)
    handled: list[float] = []

    @delayable.on(flow)
    async def handler(item: Item) -> None:
        handled.append(time.monotonic())

    async with flow:
        t0 = time.monotonic()
        if delayable.kind == "queue":
            await flow.enqueue(delayable.name, Item(sku="later", qty=1), delay=0.5)
        else:
            await flow.enqueue_priority(delayable.name, Item(sku="later", qty=1), delay=0.5)
        await eventually(lambda: len(handled) >= 1, 3, "the delayed message")
    assert len(handled) == 1
    waited = handled[0] - t0
    assert waited >= 0.5 - 0.02, f"handled after {waited:.3f}s"
    assert await delayable.in_redis(r) == 0
    assert await aux_keys(r, ns, delayable) == set()


# -- 13. sync handlers -------------------------------------------------------------------------


async def test_sync_handler_runs_in_a_thread(
    url: str, r: aioredis.Redis, ns: str, src: Src
) -> None:
    """A plain ``def`` handler gets validated payloads and runs outside the event loop thread."""
    flow = make_flow(url, ns)
    seen: list[tuple[Item, int]] = []
    lock = threading.Lock()
    loop_thread = threading.get_ident()

    @src.on(flow, concurrency=4)
    def handler(item: Item) -> None:
        time.sleep(0.01)
        with lock:
            seen.append((item, threading.get_ident()))

    async with flow:
        await src.send_many(flow, [Item(sku=f"s{i}", qty=i) for i in range(10)])
        await eventually(lambda: len(seen) >= 10, 5, "the sync handler")
        await eventually(lambda: _zero(src.pending(r)), 3, "the stream PEL to drain")
    assert sorted(item.qty for item, _ in seen) == list(range(10))
    assert all(isinstance(item, Item) for item, _ in seen)
    assert all(ident != loop_thread for _, ident in seen)
    assert await src.in_redis(r) == 0
