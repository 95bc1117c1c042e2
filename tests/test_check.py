"""``redisflow check`` (``run_checks``): every key and channel a flow's consumers and
producers touch is checked under the flow's ACL user: each partition, the producers' dedup
markers and status records, sharded channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from redisflow import Flow
from redisflow.cli.check import run_checks
from redisflow.features import partitions

pytestmark = pytest.mark.anyio


@pytest.fixture
async def user(
    r: aioredis.Redis, url: str, ns: str
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await user(rules)``: the URL of a new ACL user with ``rules`` (deleted after)."""
    made: list[str] = []

    async def make(rules: str) -> str:
        name = f"{ns}-{len(made)}"
        await r.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules.split())
        made.append(name)
        return url.replace("redis://", f"redis://{name}:pw@")

    yield make
    for name in made:
        await r.execute_command("ACL", "DELUSER", name)


async def problems_of(flow: Flow) -> list[str]:
    found, notes = await run_checks(flow)
    assert not notes, notes
    return found


async def test_every_partition_is_checked(user: Callable[..., Awaitable[str]], ns: str) -> None:
    """A user allowed the plain name of a partitioned queue, not its partitions' keys."""
    q = f"{ns}q"
    url = await user(f"+@all ~{q} ~{ns}:*")
    flow = Flow(url, prefix=ns)

    @flow.on_queue(q, partitions=3)
    async def handle(payload: int) -> None: ...

    found = await problems_of(flow)
    for key in partitions.keys(q, 3):
        assert any(repr(key) in p or key in p for p in found), (key, found)
    allowed = await user(f"+@all ~{q}* ~{ns}:*")
    assert await problems_of(flow.__class__(allowed, prefix=ns)) == []


async def test_producer_keys_are_checked(user: Callable[..., Awaitable[str]], ns: str) -> None:
    """Dedup markers and, with tracking, status records: keys a worker never reads but
    its producers write."""
    q = f"{ns}q"
    keys = Flow(prefix=ns).keys(q)
    own = " ".join(f"~{k}" for k in (q, keys.dead, keys.delayed, keys.stats, keys.inflight))
    url = await user(f"+@all {own} ~{ns}:partitions ~{ns}:sources")
    for track in (False, True):
        flow = Flow(url, prefix=ns, track=track)

        @flow.on_queue(q)
        async def handle(payload: int) -> None: ...

        found = await problems_of(flow)
        assert any(keys.dedup("check") in p for p in found), found
        assert any(f"{ns}:status:" in p for p in found) is track, found


async def test_sharded_channels_are_checked_as_such(
    user: Callable[..., Awaitable[str]], ns: str
) -> None:
    """With sharded Pub/Sub, the worker runs SSUBSCRIBE: a user refused it is a problem
    (and SUBSCRIBE alone is not enough)."""
    url = await user(f"+@all -ssubscribe &* ~{ns}:*")
    for sharded in (False, True):
        flow = Flow(url, prefix=ns, sharded_pubsub=sharded)

        @flow.on_channel(f"{ns}.events")
        async def handle(payload: int) -> None: ...

        found = await problems_of(flow)
        assert bool(found) is sharded, found
        assert all("ssubscribe" in p.lower() for p in found), found


async def test_a_schedule_and_the_paused_sources_are_checked(
    user: Callable[..., Awaitable[str]], ns: str
) -> None:
    """A schedule's keys (its internal queue and state) are all under the prefix; every
    worker reads the paused sources: a user allowed neither has a problem with each."""
    keys = Flow(prefix=ns).keys("beat")
    url = await user(f"+@all ~{ns}:partitions ~{ns}:sources")
    flow = Flow(url, prefix=ns)

    @flow.every(60, name="beat")
    async def beat() -> None: ...

    found = await problems_of(flow)
    for key in (keys.ticks, keys.schedule, keys.dead, f"{ns}:paused"):
        assert any(key in p for p in found), (key, found)
    allowed = Flow(await user(f"+@all ~{ns}:*"), prefix=ns)
    allowed.every(60, name="beat")(beat)
    assert await problems_of(allowed) == []


async def test_result_records_and_channels_are_checked(
    user: Callable[..., Awaitable[str]], ns: str
) -> None:
    """A handler with ``result_ttl`` writes result records and pushes them: a user without
    the reply channels (or the records' keys) is told."""
    q = f"{ns}q"
    no_channel = await user(f"+@all ~{q} ~{ns}:*")
    flow = Flow(no_channel, prefix=ns)

    @flow.on_queue(q, result_ttl=60)
    async def handle(payload: int) -> int:
        return payload

    found = await problems_of(flow)
    assert any(f"{ns}:reply:" in p for p in found), found
    allowed = await user(f"+@all ~{q} ~{ns}:* &{ns}:reply:*")
    flow2 = Flow(allowed, prefix=ns)
    flow2.on_queue(q, result_ttl=60)(handle)
    assert await problems_of(flow2) == []
    plain = Flow(no_channel, prefix=ns)
    plain.on_queue(q)(handle)
    assert await problems_of(plain) == []  # keeps no results: not checked
