"""Streams with consumer groups: group creation, flat field maps, acks, re-reading the own
PEL after a restart, reclaiming a dead consumer's entries, trimmed pending entries,
delivery-count dead-lettering and approximate trimming."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Flow, Message
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    to: str
    n: int


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


async def group_info(r: aioredis.Redis, stream: str, group: str) -> dict[str, Any]:
    """XINFO GROUPS of ``group`` as a str-keyed dict."""
    for info in await r.xinfo_groups(stream):
        info = {_s(k): _s(v) for k, v in info.items()}
        if info["name"] == group:
            return info
    raise AssertionError(f"group {group} not found on {stream}")


async def pending_count(r: aioredis.Redis, stream: str, group: str) -> int:
    summary = await r.xpending(stream, group)
    return int(summary["pending"])


async def pending_of(r: aioredis.Redis, stream: str, group: str) -> dict[str, tuple[str, int]]:
    """Pending entries: id -> (consumer, delivery count)."""
    rows = await r.xpending_range(stream, group, "-", "+", 1000)
    return {
        _s(row["message_id"]): (_s(row["consumer"]), int(row["times_delivered"])) for row in rows
    }


async def test_group_is_created_with_mkstream(url: str, ns: str, r: aioredis.Redis) -> None:
    """Starting a flow on a missing stream creates it and the group; appends are consumed."""
    s = f"{ns}:events"
    flow = make_flow(url, ns)
    got: list[Note] = []

    @flow.on_stream(s, group="g")
    async def handle(note: Note) -> None:
        got.append(note)

    assert await r.exists(s) == 0
    async with flow:
        assert await r.exists(s) == 1
        assert (await group_info(r, s, "g"))["name"] == "g"
        await flow.append(s, Note(to="a", n=1))
        await eventually(lambda: got)
    assert got == [Note(to="a", n=1)]


async def test_backlog_before_start_is_consumed(url: str, ns: str, r: aioredis.Redis) -> None:
    """Entries appended before the group existed are consumed (the group reads from 0)."""
    s = f"{ns}:events"
    producer = make_flow(url, ns)
    async with producer:
        ids = await producer.append_many(s, [Note(to="a", n=k) for k in range(20)])
        ids.append(await producer.append(s, {"to": "b", "n": 20}))
    got: list[tuple[str, int]] = []
    flow = make_flow(url, ns)

    @flow.on_stream(s, group="g", concurrency=1)
    async def handle(note: Note, msg: Message[Note]) -> None:
        got.append((msg.id, note.n))

    async with flow:
        await eventually(lambda: len(got) == 21)
    assert got == [(eid, k) for k, eid in enumerate(ids)]


async def test_flat_field_map_entry_is_validated_as_object(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """``XADD s * to bob n 3`` from another client is validated as ``{"to": "bob", "n": 3}``."""
    s = f"{ns}:events"
    flow = make_flow(url, ns)
    got: list[tuple[Note, Message[Note]]] = []

    @flow.on_stream(s, group="g")
    async def handle(note: Note, msg: Message[Note]) -> None:
        got.append((note, msg))

    async with flow:
        eid = await r.xadd(s, {"to": "bob", "n": "3"})
        await r.xadd(s, {"data": b'{"to": "eve", "n": 4}'})
        await eventually(lambda: len(got) == 2)
    notes = sorted((g[0] for g in got), key=lambda x: x.n)
    assert notes == [Note(to="bob", n=3), Note(to="eve", n=4)]
    flat = next(m for n, m in got if n.to == "bob")
    assert flat.id == eid.decode()
    assert flat.attempt == 1


async def test_processed_entries_are_acked(url: str, ns: str, r: aioredis.Redis) -> None:
    """After N entries are handled the PEL is empty and the group has read all of them."""
    s = f"{ns}:events"
    n = 250
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_stream(s, group="g")
    async def handle(note: Note) -> None:
        got.append(note.n)

    async with flow:
        await flow.append_many(s, [{"to": "x", "n": k} for k in range(n)])
        await eventually(lambda: len(got) == n)
        await eventually(lambda: _pending_is(r, s, "g", 0))
        info = await group_info(r, s, "g")
        assert int(info["pending"]) == 0
        last = (await r.xrevrange(s, count=1))[0][0].decode()
        assert info["last-delivered-id"] == last
        if "entries-read" in info:  # Redis >= 7.0
            assert int(info["entries-read"]) == n
            assert info["lag"] is not None and int(info["lag"]) == 0
    assert sorted(got) == list(range(n))
    assert await pending_count(r, s, "g") == 0


async def _pending_is(r: aioredis.Redis, s: str, g: str, n: int) -> bool:
    return await pending_count(r, s, g) == n


async def test_own_pending_entries_are_reread_after_restart(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Entries whose handlers were cancelled stay pending for consumer c1; a new flow with
    name c1 re-reads and handles them, with attempt >= 2."""
    s = f"{ns}:events"
    producer = make_flow(url, ns)
    async with producer:
        ids = await producer.append_many(s, [{"to": "x", "n": k} for k in range(3)])

    never = anyio.Event()
    entered: list[str] = []
    first = make_flow(url, ns, name="c1", grace_period=0.2)

    @first.on_stream(s, group="g")
    async def stuck(note: Note, msg: Message[Note]) -> None:
        entered.append(msg.id)
        await never.wait()

    async with first:
        await eventually(lambda: len(entered) == 3)
    pending = await pending_of(r, s, "g")
    assert set(pending) == set(ids)
    assert {consumer for consumer, _ in pending.values()} == {"c1"}

    got: list[tuple[str, int]] = []
    second = make_flow(url, ns, name="c1", claim_idle=60)

    @second.on_stream(s, group="g")
    async def handle(note: Note, msg: Message[Note]) -> None:
        got.append((msg.id, msg.attempt))

    async with second:
        await eventually(lambda: len(got) >= 3)
        await eventually(lambda: _pending_is(r, s, "g", 0))
        await anyio.sleep(0.3)  # room for a duplicate delivery to show up
    assert {eid for eid, _ in got} == set(ids)
    assert all(attempt >= 2 for _, attempt in got), got
    assert Counter(eid for eid, _ in got) == Counter(ids), got  # once each


async def test_dead_consumers_entries_are_reclaimed(url: str, ns: str, r: aioredis.Redis) -> None:
    """Entries read (never acked) by a dead consumer are reclaimed after claim_idle and
    handled with attempt 2."""
    s = f"{ns}:events"
    await r.xgroup_create(s, "g", id="0", mkstream=True)
    ids = [(await r.xadd(s, {"data": b'{"to": "x", "n": %d}' % k})).decode() for k in range(5)]
    await r.xreadgroup("g", "dead", {s: ">"}, count=10)
    assert {c for c, _ in (await pending_of(r, s, "g")).values()} == {"dead"}
    got: list[tuple[str, int]] = []
    flow = make_flow(url, ns, claim_idle=2, name="alive")

    @flow.on_stream(s, group="g")
    async def handle(note: Note, msg: Message[Note]) -> None:
        got.append((msg.id, msg.attempt))

    async with flow:
        await eventually(lambda: len(got) == 5, within=6)
        await eventually(lambda: _pending_is(r, s, "g", 0))
    assert sorted(got) == sorted((eid, 2) for eid in ids)


async def consumers_of(r: aioredis.Redis, stream: str, group: str) -> dict[str, int]:
    """The group's consumers and their pending counts."""
    rows = await r.xinfo_consumers(stream, group)
    return {_s(row["name"]): int(row["pending"]) for row in rows}


async def test_idle_consumers_that_hold_nothing_are_deleted(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Consumers left behind by stopped workers (nothing pending, not seen for
    ``forget_consumers_after``) are deleted from the group; one still holding an entry is
    kept, and so is the flow's own consumer."""
    s = f"{ns}:events"
    await r.xgroup_create(s, "g", id="0", mkstream=True)
    for k in range(2):
        await r.xadd(s, {"data": b'{"to": "x", "n": %d}' % k})
    gone = await r.xreadgroup("g", "gone-1", {s: ">"}, count=1)
    await r.xack(s, "g", gone[0][1][0][0])
    await r.xreadgroup("g", "holder", {s: ">"}, count=1)  # never acked
    await r.execute_command("XGROUP", "CREATECONSUMER", s, "g", "gone-2")
    assert await consumers_of(r, s, "g") == {"gone-1": 0, "holder": 1, "gone-2": 0}
    await anyio.sleep(1.6)  # older than forget_consumers_after
    # The live consumer is seen at every XREADGROUP (block_timeout 0.5 s): it would take a
    # 1 s stall of this process for its idle time to reach 1.5 s.
    flow = make_flow(url, ns, claim_idle=60, forget_consumers_after=1.5, name="alive")

    @flow.on_stream(s, group="g")
    async def handle(note: Note) -> None:
        pass

    async with flow:
        await eventually(
            lambda: _consumers_are(r, s, "g", {"holder", "alive"}),
            what="the idle consumers deleted",
        )
        await anyio.sleep(2.0)  # the live one, idle but blocked in XREADGROUP, stays
        assert set(await consumers_of(r, s, "g")) == {"holder", "alive"}
    with pytest.raises(Exception, match="forget_consumers_after"):
        make_flow(url, ns, forget_consumers_after=0)


async def _consumers_are(r: aioredis.Redis, s: str, g: str, names: set[str]) -> bool:
    return set(await consumers_of(r, s, g)) == names


async def test_entry_deleted_while_pending_leaves_the_pel(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A dead consumer's pending entry that was XDELed is dropped from the PEL on reclaim;
    the others are handled and nothing crashes."""
    s = f"{ns}:events"
    await r.xgroup_create(s, "g", id="0", mkstream=True)
    ids = [(await r.xadd(s, {"data": b'{"to": "x", "n": %d}' % k})).decode() for k in range(3)]
    await r.xreadgroup("g", "dead", {s: ">"}, count=10)
    assert await r.xdel(s, ids[1]) == 1
    got: list[str] = []
    flow = make_flow(url, ns, claim_idle=2, name="alive")

    @flow.on_stream(s, group="g")
    async def handle(note: Note, msg: Message[Note]) -> None:
        got.append(msg.id)

    async with flow:
        await eventually(lambda: len(got) == 2, within=6)
        await eventually(lambda: _pending_is(r, s, "g", 0))
        await flow.append(s, {"to": "y", "n": 9})  # still consuming
        await eventually(lambda: len(got) == 3)
    assert sorted(got[:2]) == sorted([ids[0], ids[2]])
    assert await flow_dead(r, flow, s) == 0


async def test_trimmed_pending_entries_leave_the_pel(url: str, ns: str, r: aioredis.Redis) -> None:
    """Entries trimmed (XTRIM MAXLEN 0) while pending, for a dead consumer and for the flow's
    own consumer, leave the PEL without reaching the handler or the dead letters."""
    s = f"{ns}:events"
    await r.xgroup_create(s, "g", id="0", mkstream=True)
    for k in range(3):
        await r.xadd(s, {"data": b'{"to": "x", "n": %d}' % k})
    await r.xreadgroup("g", "dead", {s: ">"}, count=2)  # 2 for "dead"
    await r.xreadgroup("g", "c1", {s: ">"}, count=1)  # 1 for our own name
    assert await pending_count(r, s, "g") == 3
    await r.xtrim(s, maxlen=0, approximate=False)
    assert await r.xlen(s) == 0

    got: list[int] = []
    flow = make_flow(url, ns, claim_idle=2, name="c1")

    @flow.on_stream(s, group="g")
    async def handle(note: Note) -> None:
        got.append(note.n)

    async with flow:
        await eventually(lambda: _pending_is(r, s, "g", 0), within=6)
        await flow.append(s, {"to": "y", "n": 9})
        await eventually(lambda: got == [9])
    assert await flow_dead(r, flow, s) == 0


async def flow_dead(r: aioredis.Redis, flow: Flow, s: str) -> int:
    return int(await r.xlen(flow.keys(s).dead))


async def test_delivery_count_at_max_attempts_goes_to_dead_letters(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """An entry already delivered max_attempts times (to a consumer that kept crashing) is
    dead-lettered when reclaimed, without running the handler again."""
    s = f"{ns}:events"
    await r.xgroup_create(s, "g", id="0", mkstream=True)
    poison = (await r.xadd(s, {"data": b'{"to": "poison", "n": 1}'})).decode()
    await r.xreadgroup("g", "dead", {s: ">"}, count=1)  # delivery 1
    for _ in range(2):  # deliveries 2 and 3, as if it crashed two more consumers
        await r.xclaim(s, "g", "dead", 0, [poison])
    assert (await pending_of(r, s, "g"))[poison] == ("dead", 3)

    calls: list[tuple[str, int]] = []
    flow = make_flow(url, ns, claim_idle=2, name="alive")

    @flow.on_stream(s, group="g", max_attempts=3)
    async def handle(note: Note, msg: Message[Note]) -> None:
        calls.append((msg.id, msg.attempt))

    async with flow:
        await eventually(lambda: _pending_is(r, s, "g", 0), within=6)
        dead = await flow.dlq(s).list()
    assert [d.data.decode("utf-8", "replace") for d in dead] == ['{"to": "poison", "n": 1}'], (
        dead,
        calls,
    )
    assert calls == [], "the handler ran on an entry with no attempts left"
    assert dead[0].attempts >= 3


async def test_append_maxlen_trims_approximately(url: str, ns: str, r: aioredis.Redis) -> None:
    """append/append_many with maxlen keep the stream near maxlen (MAXLEN ~)."""
    s1, s2 = f"{ns}:one", f"{ns}:many"
    flow = make_flow(url, ns)
    async with flow:
        for k in range(1000):
            await flow.append(s1, {"to": "x", "n": k}, maxlen=100)
        await flow.append_many(s2, [{"to": "x", "n": k} for k in range(1000)], maxlen=100)
        unbounded = await flow.append_many(f"{ns}:all", [{"n": k} for k in range(1000)])
    for s in (s1, s2):
        length = await r.xlen(s)
        assert 100 <= length < 1000, (s, length)
        last = await r.xrevrange(s, count=1)
        assert last[0][1][b"data"] == b'{"to":"x","n":999}'  # the newest are kept
    assert await r.xlen(f"{ns}:all") == len(unbounded) == 1000


async def test_long_running_handler_keeps_its_entry(url: str, ns: str, r: aioredis.Redis) -> None:
    """A handler running longer than claim_idle keeps its entry fresh: a peer consumer of
    the same group does not reclaim it, and it is handled exactly once."""
    s = f"{ns}:events"
    calls: list[tuple[str, str]] = []
    done = anyio.Event()
    slow = make_flow(url, ns, claim_idle=2, name="slow")
    peer = make_flow(url, ns, claim_idle=2, name="peer")

    @slow.on_stream(s, group="g")
    async def long_job(note: Note, msg: Message[Note]) -> None:
        calls.append(("slow", msg.id))
        await anyio.sleep(3.0)  # > claim_idle
        done.set()

    @peer.on_stream(s, group="g")
    async def peer_job(note: Note, msg: Message[Note]) -> None:
        calls.append(("peer", msg.id))

    async with slow:
        eid = await slow.append(s, {"to": "x", "n": 1})
        await eventually(lambda: calls)
        async with peer:
            with anyio.fail_after(5):
                await done.wait()
            await eventually(lambda: _pending_is(r, s, "g", 0))
    assert calls == [("slow", eid)]


async def test_group_destroyed_while_running_is_created_again(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """XGROUP DESTROY under a blocked consumer (NOGROUP) is survived: the group is created
    again and later entries are handled."""
    s = f"{ns}:events"
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_stream(s, group="g")
    async def handle(note: Note) -> None:
        got.append(note.n)

    async with flow:
        await flow.append(s, Note(to="a", n=1))
        await eventually(lambda: got == [1])
        await anyio.sleep(0.1)  # the consumer is blocked in XREADGROUP again
        assert await r.xgroup_destroy(s, "g") == 1

        async def group_exists() -> bool:
            return any(_s(g["name"]) == "g" for g in await r.xinfo_groups(s))

        await eventually(group_exists, within=5)
        await flow.append(s, Note(to="b", n=2))
        await eventually(lambda: 2 in got, within=5)
