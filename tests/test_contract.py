"""The delivery contract: one behaviour suite, written once, run against every consumer kind.

Each test is parametrized over the kinds the behaviour applies to:

- every kind (``queue``, ``priority``, their ``at-most-once`` variants, ``stream`` and
  ``channel``): delivery, the Message envelope, verdicts (retry, backoff, ``Retry``,
  ``Reject``, dead letters, invalid payloads, timeouts), sync handlers, concurrency, a
  graceful stop, reconnection;
- the durable kinds (everything but ``channel``): a backlog written before the flow starts,
  competing consumers;
- the reliable kinds (``queue``, ``priority``, ``stream``): nothing is lost when a flow
  stops or a worker is killed with SIGKILL; a handler outliving the lease keeps its message.

The slow fault-injection suites (``-m chaos``) and ``docs/reliability.md`` go further.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Flow, Message, Reject, Retry
from tests.support import flows
from tests.support.flows import eventually
from tests.support.kinds import ALL, DURABLE, LISTY, RELIABLE, Kind, by_kind
from tests.support.servers import start_redis, stop_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


class Email(BaseModel):
    """The payload model of most tests."""

    to: str


# -- the kinds under test ------------------------------------------------------------------

all_kinds = by_kind(ALL)
durable_kinds = by_kind(DURABLE)
reliable_kinds = by_kind(RELIABLE)
listy_kinds = by_kind(LISTY)
# After a stop, the next flow is the same worker (a stream consumer re-reads its own pending
# entries) or another one (it claims the entries the stopped consumer handed back).
restarts = pytest.mark.parametrize("successor", ["w1", "w2"], ids=["same-name", "other-name"])


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def url(topology_url: str) -> str:
    """Every test of the contract runs on one server and on a 3-master cluster."""
    return topology_url


@pytest.fixture
def make_flow(url: str, ns: str) -> Callable[..., Flow]:
    """A Flow factory with the test's prefix and short timings (overridable)."""
    return functools.partial(flows.make_flow, url, ns)


async def settled(kind: Kind, r: aioredis.Redis, flow: Flow, name: str) -> None:
    """Wait until Redis holds nothing of the source (acks are sent asynchronously)."""

    async def empty() -> bool:
        return await kind.held(r, flow, name) == 0

    await eventually(empty, what=f"{name} settled")


async def _count_dead(flow: Flow, name: str, n: int) -> bool:
    return len(await flow.dlq(name).list()) >= n


def gaps(times: list[float]) -> list[float]:
    """The intervals between consecutive timestamps."""
    return [b - a for a, b in itertools.pairwise(times)]


def payloads(items: Iterable[Any]) -> list[str]:
    """The ``to`` fields of received Email payloads."""
    return [e.to for e in items]


# -- delivery ------------------------------------------------------------------------------


@all_kinds
async def test_delivers_validated_payload(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """A produced model or dict reaches the handler as a validated model instance."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[Any] = []

    @kind.on(flow, name)
    async def handler(e: Email) -> None:
        got.append(e)

    async with flow:
        await kind.produce(flow, name, Email(to="model"))
        await kind.produce(flow, name, {"to": "dict"})
        await eventually(lambda: len(got) == 2)
    assert all(isinstance(e, Email) for e in got)
    assert sorted(payloads(got)) == ["dict", "model"]


@all_kinds
async def test_message_envelope(kind: Kind, make_flow: Callable[..., Flow], ns: str) -> None:
    """A Message parameter carries id, source, attempt 1, enqueue time, headers and raw bytes."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[tuple[Message[Email], Email]] = []

    @kind.on(flow, name)
    async def handler(msg: Message[Email], e: Email) -> None:
        got.append((msg, e))

    async with flow:
        before = datetime.now(UTC) - timedelta(seconds=2)
        msg_id = await kind.produce(flow, name, {"to": "a"}, headers={"trace": "t-1"})
        await eventually(lambda: len(got) == 1)
    msg, e = got[0]
    assert e == Email(to="a")
    assert msg.payload == e
    if msg_id is not None:
        assert msg.id == msg_id
    assert msg.id
    assert msg.source == kind.source(name)
    assert msg.attempt == 1
    assert msg.enqueued_at is not None
    assert before <= msg.enqueued_at <= datetime.now(UTC) + timedelta(seconds=2)
    expected = {"trace": "t-1"}
    if kind.kind == "channel":
        expected["channel"] = name
    assert msg.headers == expected
    assert json.loads(msg.raw) == {"to": "a"}


@all_kinds
async def test_consumes_items_written_by_other_clients(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Bare JSON written with plain Redis commands (and a flat stream field map) is consumed."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[tuple[Email, Message[Email]]] = []

    @kind.on(flow, name)
    async def handler(e: Email, msg: Message[Email]) -> None:
        got.append((e, msg))

    async with flow:
        entry_id = await kind.push_raw(r, name, b'{"to": "foreign"}')
        expected = ["foreign"]
        if kind.kind == "stream":
            await r.xadd(name, {"to": "flat"})
            expected.append("flat")
        await eventually(lambda: len(got) == len(expected))
    assert sorted(payloads(e for e, _ in got)) == sorted(expected)
    for _, msg in got:
        assert msg.attempt == 1
        assert msg.source == kind.source(name)
        assert msg.id
    first = next(msg for e, msg in got if e.to == "foreign")
    if kind.kind == "stream":
        assert entry_id is not None
        assert first.id == entry_id.decode()
        assert first.enqueued_at is not None  # the entry id is a timestamp
    else:
        assert first.enqueued_at is None
        assert first.headers == ({"channel": name} if kind.kind == "channel" else {})
        assert first.raw == b'{"to": "foreign"}'


@all_kinds
async def test_foreign_items_are_retried_and_dead_lettered_like_produced_ones(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A foreign item (no envelope) that fails is retried with its attempt counted, and one
    that keeps failing is dead-lettered with its original bytes."""
    flow = make_flow()
    name = kind.name(ns)
    seen: list[tuple[str, int]] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01)
    async def handler(e: Email, msg: Message[Email]) -> None:
        seen.append((e.to, msg.attempt))
        if e.to == "doomed" or msg.attempt == 1:
            raise RuntimeError(f"fails: {e.to}")

    async with flow:
        await kind.push_raw(r, name, b'{"to": "flaky"}')
        await kind.push_raw(r, name, b'{"to": "doomed"}')
        await eventually(lambda: _count_dead(flow, name, 1))
        await eventually(lambda: ("flaky", 2) in seen)
        await settled(kind, r, flow, name)
        dead = await flow.dlq(name).list()
    assert sorted(seen) == [("doomed", 1), ("doomed", 2), ("flaky", 1), ("flaky", 2)]
    assert len(dead) == 1
    assert dead[0].data.decode("utf-8", "replace") == '{"to": "doomed"}'
    assert dead[0].error == "RuntimeError: fails: doomed"
    assert dead[0].attempts == 2


@durable_kinds
async def test_backlog_written_before_start_is_consumed(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """Messages produced while no consumer runs are delivered once the flow starts."""
    producer = make_flow()
    name = kind.name(ns)
    async with producer:
        await kind.produce_many(producer, name, [{"to": str(i)} for i in range(5)])

    flow = make_flow()
    got: list[Email] = []

    @kind.on(flow, name)
    async def handler(e: Email) -> None:
        got.append(e)

    async with flow:
        await eventually(lambda: len(got) == 5)
    assert sorted(payloads(got)) == [str(i) for i in range(5)]


@all_kinds
async def test_one_worker_sees_production_order(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """With concurrency 1 messages are handled in the order they were produced (of one
    partition key, for a partitioned source: the order is kept per partition)."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[Email] = []

    @kind.on(flow, name, concurrency=1)
    async def handler(e: Email) -> None:
        got.append(e)

    async with flow:
        key = "one-customer" if kind.partitions > 1 else None
        await kind.produce_many(flow, name, [{"to": str(i)} for i in range(20)], key=key)
        await eventually(lambda: len(got) == 20)
    assert payloads(got) == [str(i) for i in range(20)]


@all_kinds
async def test_each_message_handled_once_and_settled(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Many messages in small batches are each handled once, and Redis keeps nothing after:
    no batch list, worker set, lease or delayed set, no dead letter."""
    flow = make_flow(batch_size=7, prefetch=20)
    name = kind.name(ns)
    n = 300
    got: list[str] = []

    @kind.on(flow, name, concurrency=4)
    async def handler(e: Email) -> None:
        await anyio.lowlevel.checkpoint()
        got.append(e.to)

    async with flow:
        for start in range(0, n, 50):
            await kind.produce_many(flow, name, [{"to": str(i)} for i in range(start, start + 50)])
        await eventually(lambda: len(got) >= n)
    assert sorted(got, key=int) == [str(i) for i in range(n)]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 0
        assert await kind.leftovers(r, probe, name) == set()
        assert await probe.dlq(name).list() == []


@durable_kinds
async def test_competing_consumers_share_without_duplicates(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """Two flows on one source (one group for a stream) handle each message exactly once."""
    name = kind.name(ns)
    got: list[str] = []
    flows = [
        make_flow(name="one", batch_size=5, prefetch=10),
        make_flow(name="two", batch_size=5, prefetch=10),
    ]
    for flow in flows:

        @kind.on(flow, name, concurrency=2)
        async def handler(e: Email) -> None:
            await anyio.lowlevel.checkpoint()
            got.append(e.to)

    async with flows[0], flows[1]:
        await kind.produce_many(flows[0], name, [{"to": str(i)} for i in range(200)])
        await eventually(lambda: len(got) >= 200)
    assert sorted(got, key=int) == [str(i) for i in range(200)]


@reliable_kinds  # an at-most-once pop has nothing a peer could take back
async def test_slow_handler_keeps_its_message(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """A handler outliving lease and claim_idle keeps its message: no peer gets a duplicate."""
    name = kind.name(ns)
    calls: list[str] = []
    done: list[str] = []
    flows = [make_flow(name="one"), make_flow(name="two")]
    for flow in flows:

        @kind.on(flow, name)
        async def handler(e: Email) -> None:
            calls.append(e.to)
            # lease and claim_idle are 2 s: a peer would take the message by ~3 s
            await anyio.sleep(4)
            done.append(e.to)

    async with flows[0], flows[1]:
        await kind.produce(flows[0], name, {"to": "slow"})
        await eventually(lambda: done, within=10)
    assert calls == ["slow"]


@listy_kinds
async def test_delayed_enqueue_waits(kind: Kind, make_flow: Callable[..., Flow], ns: str) -> None:
    """A message enqueued with ``delay`` is not delivered before the delay has passed."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[float] = []

    @kind.on(flow, name)
    async def handler(e: Email) -> None:
        got.append(time.monotonic())

    async with flow:
        sent = time.monotonic()
        if kind.kind == "queue":
            await flow.enqueue(name, {"to": "later"}, delay=0.6)
        else:
            await flow.enqueue_priority(name, {"to": "later"}, delay=0.6)
        await eventually(lambda: got)
    assert got[0] - sent >= 0.55


# -- verdicts ------------------------------------------------------------------------------


@all_kinds
async def test_failure_is_retried_until_success(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A failing handler gets the message again, attempt by attempt, until it succeeds."""
    flow = make_flow()
    name = kind.name(ns)
    attempts: list[int] = []

    @kind.on(flow, name, max_attempts=5, retry_delay=0.01)
    async def handler(e: Email, msg: Message[Email]) -> None:
        attempts.append(msg.attempt)
        if msg.attempt < 3:
            raise RuntimeError("flaky")

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: len(attempts) == 3)
    assert attempts == [1, 2, 3]
    async with make_flow() as probe:
        assert await probe.dlq(name).list() == []
        assert await kind.held(r, probe, name) == 0


@all_kinds
async def test_retry_backoff_doubles(kind: Kind, make_flow: Callable[..., Flow], ns: str) -> None:
    """Retry delays follow ``retry_delay * 2**(attempt-1)`` jittered to [d/2, d]."""
    flow = make_flow()
    name = kind.name(ns)
    times: list[float] = []

    @kind.on(flow, name, max_attempts=4, retry_delay=0.2)
    async def handler(e: Email) -> None:
        times.append(time.monotonic())
        raise RuntimeError("always")

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: len(times) == 4)
    first, second, third = gaps(times)
    # Lower bounds only (a queue moves due retries on its housekeeping tick, so later is
    # fine); 10 ms of slack for millisecond rounding of server time.
    assert first >= 0.1 - 0.01
    assert second >= 0.2 - 0.01
    assert third >= 0.4 - 0.01, f"the third delay did not grow: {third:.3f}s"


@durable_kinds  # on_channel has no retry_max_delay
async def test_retry_backoff_is_capped(kind: Kind, make_flow: Callable[..., Flow], ns: str) -> None:
    """No retry waits longer than ``retry_max_delay``."""
    flow = make_flow()
    name = kind.name(ns)
    times: list[float] = []

    @kind.on(flow, name, max_attempts=7, retry_delay=0.1, retry_max_delay=0.1)
    async def handler(e: Email) -> None:
        times.append(time.monotonic())
        raise RuntimeError("always")

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: len(times) == 7, within=10)
    # Uncapped, the sixth delay would be in [1.6, 3.2] s. A queue's due retries move on a
    # 0.5 s housekeeping tick, hence the margin.
    assert max(gaps(times)) < 1.0, gaps(times)


@all_kinds
async def test_retry_signal_chooses_the_delay(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """``raise Retry(delay=...)`` overrides the backoff (here 60 s) for that attempt: the
    next attempt comes after that delay, not sooner, not after the backoff."""
    flow = make_flow()
    name = kind.name(ns)
    attempts: list[int] = []
    times: list[float] = []

    @kind.on(flow, name, max_attempts=3, retry_delay=60.0, retry_max_delay=60.0)
    async def handler(msg: Message[Email]) -> None:
        attempts.append(msg.attempt)
        times.append(time.monotonic())
        if msg.attempt == 1:
            raise Retry(delay=0.3)

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: len(attempts) == 2)
    assert attempts == [1, 2]
    # 20 ms of slack: a queue's due time is in server milliseconds.
    assert gaps(times)[0] >= 0.3 - 0.02, gaps(times)


@all_kinds
async def test_retry_signal_counts_toward_max_attempts(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A message that keeps asking for a retry is dead-lettered after ``max_attempts``."""
    flow = make_flow()
    name = kind.name(ns)
    calls: list[int] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01)
    async def handler(msg: Message[Email]) -> None:
        calls.append(msg.attempt)
        raise Retry(delay=0, reason="not yet")

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: flow.dlq(name).list())
        dead = await flow.dlq(name).list()
        await settled(kind, r, flow, name)
    assert calls == [1, 2]
    assert len(dead) == 1
    assert dead[0].attempts == 2
    assert dead[0].error == "retry requested: not yet"


@all_kinds
async def test_reject_dead_letters_at_once(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """``raise Reject(reason)`` skips the remaining attempts and dead-letters the message."""
    flow = make_flow()
    name = kind.name(ns)
    calls: list[int] = []

    @kind.on(flow, name, max_attempts=5, retry_delay=0.01)
    async def handler(msg: Message[Email]) -> None:
        calls.append(msg.attempt)
        raise Reject("bad address")

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: flow.dlq(name).list())
        dead = await flow.dlq(name).list()
        await settled(kind, r, flow, name)
    assert calls == [1]
    assert len(dead) == 1
    assert dead[0].error == "rejected: bad address"
    assert dead[0].attempts == 1


@all_kinds
async def test_exhausted_message_is_dead_lettered_with_its_story(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """An exhausted message moves to the dead letters with payload, error, place and counts."""
    flow = make_flow()
    name = kind.name(ns)
    calls: list[int] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01)
    async def handler(msg: Message[Email]) -> None:
        calls.append(msg.attempt)
        raise ValueError("boom")

    async with flow:
        since = time.time() * 1000 - 5000
        await kind.produce(flow, name, {"to": "dead"})
        await eventually(lambda: flow.dlq(name).list())
        await settled(kind, r, flow, name)
    assert calls == [1, 2]
    async with make_flow() as probe:
        dead = await probe.dlq(name).list()
    assert len(dead) == 1
    entry = dead[0]
    assert json.loads(entry.data.decode("utf-8", "replace")) == {"to": "dead"}
    assert entry.error == "ValueError: boom"
    assert "test_contract.py" in entry.where
    assert entry.where.endswith("in handler")
    assert entry.attempts == 2
    assert entry.handler == handler.__qualname__
    assert entry.source == str(kind.source(name))
    assert since <= entry.failed_at.timestamp() * 1000 <= time.time() * 1000 + 5000
    if kind.kind == "channel":
        assert entry.channel == name
    assert entry.id


@all_kinds
async def test_invalid_payload_is_dead_lettered_without_calling_the_handler(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """An invalid or non-JSON payload is dead-lettered at once, without calling the handler,
    with a reason that names the problem; the messages behind it are handled."""
    flow = make_flow()
    name = kind.name(ns)
    got: list[Email] = []

    @kind.on(flow, name, max_attempts=5, retry_delay=0.01)
    async def handler(e: Email) -> None:
        got.append(e)

    async with flow:
        await kind.produce(flow, name, {"nope": 1})
        await kind.push_raw(r, name, b"not json {")
        await eventually(lambda: _count_dead(flow, name, 2))
        await kind.produce(flow, name, {"to": "ok"})
        await eventually(lambda: got)
        await settled(kind, r, flow, name)
        dead = await flow.dlq(name).list()
    assert payloads(got) == ["ok"]
    assert len(dead) == 2
    for entry in dead:
        assert entry.attempts == 1
        assert entry.error.startswith(("invalid payload", "undecodable payload")), entry
        assert entry.handler == handler.__qualname__
        assert entry.source == str(kind.source(name))
    assert json.loads(dead[0].data.decode("utf-8", "replace")) == {"nope": 1}
    assert "to\n  Field required" in dead[0].error, dead[0].error
    assert dead[1].data.decode("utf-8", "replace") == "not json {"
    assert "Invalid JSON" in dead[1].error, dead[1].error


@all_kinds
async def test_timeout_fails_the_attempt(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """A handler running longer than ``timeout`` is cancelled and the attempt fails."""
    flow = make_flow()
    name = kind.name(ns)
    attempts: list[int] = []
    cancelled: list[int] = []

    @kind.on(flow, name, max_attempts=2, retry_delay=0.01, timeout=0.2)
    async def handler(msg: Message[Email]) -> None:
        attempts.append(msg.attempt)
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(msg.attempt)
            raise

    async with flow:
        started = time.monotonic()
        await kind.produce(flow, name, {"to": "slow"})
        await eventually(lambda: flow.dlq(name).list())
        elapsed = time.monotonic() - started
        dead = await flow.dlq(name).list()
    assert attempts == [1, 2]
    assert cancelled == [1, 2]
    assert elapsed < 5
    assert dead[0].error == "handler timed out after 0.2s"
    assert dead[0].attempts == 2


@all_kinds
async def test_sync_handler_runs_in_a_thread(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """A plain ``def`` handler runs off the event loop thread; its exceptions retry too."""
    flow = make_flow()
    name = kind.name(ns)
    seen: list[tuple[int, int, str]] = []

    @kind.on(flow, name, max_attempts=3, retry_delay=0.01)
    def handler(e: Email, msg: Message[Email]) -> None:
        seen.append((threading.get_ident(), msg.attempt, e.to))
        if msg.attempt == 1:
            raise RuntimeError("first try fails")

    async with flow:
        await kind.produce(flow, name, {"to": "sync"})
        await eventually(lambda: len(seen) == 2)
    loop_thread = threading.get_ident()
    assert [(attempt, to) for _, attempt, to in seen] == [(1, "sync"), (2, "sync")]
    assert all(ident != loop_thread for ident, _, _ in seen)


@all_kinds
async def test_concurrency_bounds_parallel_handlers(
    kind: Kind, make_flow: Callable[..., Flow], ns: str
) -> None:
    """Up to ``concurrency`` handlers run at once, and never more."""
    flow = make_flow()
    name = kind.name(ns)
    active = 0
    peak = 0
    done: list[str] = []
    gate = anyio.Event()

    @kind.on(flow, name, concurrency=4)
    async def handler(e: Email) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await gate.wait()
        finally:
            active -= 1
        done.append(e.to)

    async with flow:
        await kind.produce_many(flow, name, [{"to": str(i)} for i in range(10)])
        await eventually(lambda: active == 4)
        # Not an assertion by sleep: a broken limit would start the other 6 right away;
        # this gives them the chance before the gate opens.
        await anyio.sleep(0.2)
        assert active == 4
        gate.set()
        await eventually(lambda: len(done) == 10)
    assert peak == 4


# -- stopping, crashing, reconnecting ------------------------------------------------------


@all_kinds
async def test_stop_lets_in_flight_handlers_finish(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Stopping waits for running handlers (within the grace period) and settles their messages."""
    flow = make_flow(grace_period=5)
    name = kind.name(ns)
    started = anyio.Event()
    finished: list[str] = []

    @kind.on(flow, name)
    async def handler(e: Email) -> None:
        started.set()
        await anyio.sleep(0.3)
        finished.append(e.to)

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        with anyio.fail_after(5):
            await started.wait()
    assert finished == ["a"]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 0


@reliable_kinds
async def test_stop_after_grace_period_hands_messages_back(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A handler cancelled after the grace period keeps its message for the next flow."""
    flow = make_flow(grace_period=0.3, name="w1")
    name = kind.name(ns)
    started = anyio.Event()
    cancelled: list[str] = []

    @kind.on(flow, name)
    async def stuck(e: Email) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.append(e.to)
            raise

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        with anyio.fail_after(5):
            await started.wait()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3
    assert cancelled == ["a"]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 1, "the cancelled message was not kept"

    again = make_flow(name="w1")
    got: list[str] = []

    @kind.on(again, name)
    async def handler(e: Email) -> None:
        got.append(e.to)

    async with again:
        await eventually(lambda: got)
    assert got == ["a"]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 0


@reliable_kinds
@restarts
async def test_stop_hands_back_fetched_but_unstarted_messages(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, successor: str, r: aioredis.Redis
) -> None:
    """Fetched but unstarted messages go back on stop (none stays in a batch list), and come
    again as attempt 1; each message is handled exactly once over the two flows."""
    name = kind.name(ns)
    first: list[str] = []
    started = anyio.Event()
    flow = make_flow(name="w1")

    @kind.on(flow, name, concurrency=1)
    async def slow(e: Email) -> None:
        started.set()
        await anyio.sleep(0.2)
        first.append(e.to)

    async with flow:
        await kind.produce_many(flow, name, [{"to": str(i)} for i in range(10)])
        with anyio.fail_after(5):
            await started.wait()
    assert first, "the in-flight handler should finish within the grace period"
    # Each message is either handled or back in Redis, not both, not neither.
    assert await kind.held(r, flow, name) == 10 - len(first)
    assert await kind.leftovers(r, flow, name) == set()

    second: list[str] = []
    attempts: list[int] = []
    again = make_flow(name=successor)

    @kind.on(again, name)
    async def handler(e: Email, msg: Message[Email]) -> None:
        second.append(e.to)
        attempts.append(msg.attempt)

    async with again:
        await eventually(lambda: len(first) + len(second) >= 10)
    assert sorted(first + second, key=int) == [str(i) for i in range(10)]
    # No handler ever saw them: handing them back must not cost them an attempt.
    assert attempts == [1] * len(second)


@reliable_kinds
@restarts
async def test_pending_retry_survives_a_restart(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, successor: str, r: aioredis.Redis
) -> None:
    """A retry scheduled before a stop is delivered by the next flow, as attempt 2."""
    name = kind.name(ns)
    flow = make_flow(name="w1")
    failed: list[int] = []

    @kind.on(flow, name, max_attempts=5)
    async def failing(msg: Message[Email]) -> None:
        failed.append(msg.attempt)
        raise Retry(delay=0.5)

    async with flow:
        await kind.produce(flow, name, {"to": "a"})
        await eventually(lambda: failed)
    assert failed == [1]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 1, "the pending retry was not kept"

    again = make_flow(name=successor)
    got: list[int] = []

    @kind.on(again, name, max_attempts=5)
    async def handler(msg: Message[Email]) -> None:
        got.append(msg.attempt)

    async with again:
        await eventually(lambda: got)
    assert got == [2]


WORKER = textwrap.dedent(
    """
    import sys

    import anyio

    from redisflow import Flow, Message
    from tests.support.kinds import Kind

    url, ns, kind, name, log, parts = sys.argv[1:7]
    sys.stderr = open(log, "w", buffering=1)  # read by the test if the worker fails
    flow = Flow(url, prefix=ns, lease=2, claim_idle=2, block_timeout=0.5, name="victim")


    async def handler(msg: Message) -> None:
        await flow.redis.rpush(ns + ":started", msg.id)
        await anyio.sleep(3600)


    Kind(kind, partitions=int(parts)).on(flow, name)(handler)
    anyio.run(flow.run)
    """
)


async def _started(r: aioredis.Redis, ns: str, n: int) -> bool:
    return int(await r.llen(f"{ns}:started")) >= n


def worker_command(
    source: str, tmp_path: Path, url: str, ns: str, kind: Kind, name: str
) -> tuple[list[str], dict[str, str], Path]:
    """The argv and environment that run a worker script (``WORKER``, ``POISON_WORKER``),
    and the file it logs to."""
    script = tmp_path / "worker.py"
    script.write_text(source)
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(script), url, ns, kind.kind, name, str(log), str(kind.partitions)]
    return argv, env, log


@reliable_kinds
async def test_messages_of_a_killed_worker_are_delivered_again(
    kind: Kind,
    make_flow: Callable[..., Flow],
    ns: str,
    r: aioredis.Redis,
    url: str,
    tmp_path: Path,
) -> None:
    """The messages of a worker killed by SIGKILL mid-handler are delivered again to a peer,
    as attempt 2: the delivery that died counts (a stream's delivery count, a queue
    message's envelope; an item written by another client gets one, with the same id)."""
    name = kind.name(ns)
    async with make_flow() as producer:
        msg_id = await kind.produce(producer, name, {"to": "a"})
    await kind.push_raw(r, name, b'{"to": "b"}')  # written by another client
    argv, env, log = worker_command(WORKER, tmp_path, url, ns, kind, name)
    proc = await anyio.open_process(argv, env=env, stdout=None, stderr=None)
    try:
        try:
            await eventually(lambda: _started(r, ns, 2), within=15, what="both handlers started")
        except AssertionError:
            raise AssertionError(f"the worker did not start:\n{log.read_text()}") from None
        started = {i.decode() for i in await r.lrange(f"{ns}:started", 0, -1)}
        assert msg_id in started
        proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.fail_after(10):
                await proc.wait()
        await proc.aclose()

    rescuer = make_flow(name="rescuer")
    got: list[Message[Email]] = []

    @kind.on(rescuer, name)
    async def handler(msg: Message[Email]) -> None:
        got.append(msg)

    async with rescuer:
        await eventually(lambda: len(got) == 2, within=10, what="redelivery after the crash")
    assert {m.id for m in got} == started  # the foreign item keeps its id too
    assert sorted(m.payload.to for m in got if m.payload) == ["a", "b"]
    assert [m.attempt for m in got] == [2, 2]
    async with make_flow() as probe:
        assert await kind.held(r, probe, name) == 0


POISON_WORKER = textwrap.dedent(
    """
    import os
    import signal
    import sys

    import anyio

    from redisflow import Flow
    from tests.support.kinds import Kind

    url, ns, kind, name, log, parts = sys.argv[1:7]
    sys.stderr = open(log, "a", buffering=1)
    flow = Flow(
        url, prefix=ns, lease=2, claim_idle=2, block_timeout=0.5, batch_size=1, prefetch=1
    )


    async def handler(job: dict) -> None:
        if job["poison"]:
            os.kill(os.getpid(), signal.SIGKILL)  # a segfault, the OOM killer...
        await flow.redis.rpush(ns + ":handled", job["n"])


    Kind(kind, partitions=int(parts)).on(flow, name, max_attempts=2, concurrency=1)(handler)
    anyio.run(flow.run)
    """
)


@reliable_kinds
async def test_a_message_that_kills_every_worker_is_dead_lettered(
    kind: Kind,
    make_flow: Callable[..., Flow],
    ns: str,
    r: aioredis.Redis,
    url: str,
    tmp_path: Path,
) -> None:
    """A message whose handler kills the worker process each time (max_attempts=2) does not
    stall its source forever: after two deliveries that died it is dead-lettered, and the
    messages behind it are handled. (A crash counts a delivery for every message the worker
    held, as stream delivery counts do; with ``prefetch=1`` that is the poison alone.)"""
    name = kind.name(ns)
    async with make_flow() as producer:
        await kind.produce(producer, name, {"n": 0, "poison": True})
        for n in range(1, 4):
            await kind.produce(producer, name, {"n": n, "poison": False})
    argv, env, log = worker_command(POISON_WORKER, tmp_path, url, ns, kind, name)
    deaths = 0
    dead_key = make_flow().keys(name).dead
    with anyio.fail_after(90):
        while not await r.xlen(dead_key):
            proc = await anyio.open_process(argv, env=env, stdout=None, stderr=None)
            try:
                with anyio.move_on_after(20):  # each worker dies, or dead-letters the poison
                    while proc.returncode is None and not await r.xlen(dead_key):  # noqa: ASYNC110
                        await anyio.sleep(0.1)
                if proc.returncode is not None:
                    deaths += 1
            finally:
                if proc.returncode is None:
                    proc.terminate()
                await proc.wait()
                await proc.aclose()
    [(_, fields)] = await r.xrange(dead_key)
    assert b"without completing" in fields[b"error"], fields
    assert orjson.loads(fields[b"data"]) == {"n": 0, "poison": True}
    assert int(fields[b"attempts"]) == 3  # the delivery count, with the one that buried it
    assert deaths == 2, log.read_text()
    rescuer = make_flow()

    @kind.on(rescuer, name)
    async def handler(job: dict[str, Any]) -> None:
        await r.rpush(f"{ns}:handled", job["n"])

    async def all_handled() -> bool:
        return {int(n) for n in await r.lrange(f"{ns}:handled", 0, -1)} == {1, 2, 3}

    async def nothing_held() -> bool:
        return await kind.held(r, rescuer, name) == 0

    async with rescuer:
        await eventually(all_handled, within=10, what="the messages behind it")
        # A worker stopped by the loop above may have handled a message whose ack it had
        # not sent yet (a loaded machine): its entry stays pending until the rescuer
        # reclaims it (at-least-once), so "handled" comes before "nothing held".
        await eventually(nothing_held, within=30, what="nothing left in Redis", interval=0.2)


@all_kinds
async def test_consumer_survives_killed_connections(kind: Kind, ns: str) -> None:
    """After Redis drops every connection, consumers reconnect (resubscribe) and deliver again."""
    server = start_redis()
    try:
        client = aioredis.Redis.from_url(server.url)
        flow = Flow(server.url, prefix=ns, lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)
        name = kind.name(ns)
        got: list[str] = []

        @kind.on(flow, name)
        async def handler(e: Email) -> None:
            got.append(e.to)

        try:
            async with flow:
                await kind.produce(flow, name, {"to": "before"})
                await eventually(lambda: got == ["before"])
                killed = await client.client_kill_filter(_type="normal", skipme=True)
                killed += await client.client_kill_filter(_type="pubsub", skipme=True)
                assert killed >= 2
                if kind.kind == "channel":
                    await eventually(
                        lambda: flow.publish(name, {"to": "after"}), what="resubscribed"
                    )
                else:
                    await kind.produce(flow, name, {"to": "after"})
                await eventually(lambda: "after" in got)
        finally:
            await client.aclose()
        assert got == ["before", "after"]
    finally:
        stop_redis(server)


async def test_idle_waits_do_not_grow_the_workers_batch_set(
    make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Each timed-out blocking wait reuses its registered (empty) batch key: a worker idle
    for many block timeouts holds one key, not one per wait."""
    kind = Kind("queue")
    name = kind.name(ns)
    flow = make_flow(block_timeout=0.1)

    @kind.on(flow, name)
    async def handle(email: Email) -> None:
        pass

    async with flow:
        await anyio.sleep(1.0)  # ~10 block timeouts
        keys = flow.keys(name)
        sets = [key async for key in r.scan_iter(match=f"{keys.base}:w:*")]
        assert len(sets) == 1
        assert await r.scard(sets[0]) <= 1
