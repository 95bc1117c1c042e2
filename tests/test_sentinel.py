"""Redis Sentinel: a ``redis+sentinel://`` URL finds the primary, every loop follows it
through a failover, and ``wait_replicas`` makes a producer's acknowledgement mean "on a
replica too".

Every test here runs against a real local setup: one primary, one replica, three sentinels
(``redisflow.testing.SentinelSetup``), each process private and stopped by PID.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import Flow, ReplicationError
from redisflow.connection.sentinel import failover_event
from redisflow.connection.url import Address
from redisflow.errors import AuthError, ConnectionLost
from redisflow.testing.sentinel import SentinelSetup
from tests.support.flows import eventually, make_flow, until
from tests.support.kinds import ALL, Kind
from tests.support.servers import start_redis, stop_redis

pytestmark = pytest.mark.anyio


@pytest.fixture
def sentinel(redis_sentinel_factory: Callable[..., SentinelSetup]) -> SentinelSetup:
    """A primary, two replicas, three sentinels: this test's alone (tests fail it over).
    Two replicas, so that ``wait_replicas=1`` still finds one once the other is promoted."""
    return redis_sentinel_factory(replicas=2, sentinels=3)


@pytest.fixture(scope="module")
def shared_sentinel() -> Iterator[SentinelSetup]:
    """One setup for the tests that do not fail it over."""
    with SentinelSetup.start(replicas=1, sentinels=3) as setup:
        yield setup


def _name(kind: Kind, ns: str) -> str:
    return f"{ns}:{kind}"  # unique per variant (queue and queue-at-most-once)


class Sent:
    """Producer loops, one per kind, recording which sends were acknowledged."""

    def __init__(self, flow: Flow, ns: str, kinds: list[Kind]) -> None:
        self.flow, self.ns, self.kinds = flow, ns, kinds
        self.acked_at: dict[str, dict[int, float]] = {str(k): {} for k in kinds}
        self.failed: dict[str, set[int]] = {str(k): set() for k in kinds}
        self.errors: list[str] = []
        self.running = True
        self.switch = 0.0  # when the primary was failed over or killed
        self.missing: dict[str, set[int]] = {}
        self.whereabouts: list[str] = []  # of the missing ones, filled only when any are

    @property
    def acked(self) -> dict[str, set[int]]:
        """The numbers acknowledged, per kind."""
        return {k: set(v) for k, v in self.acked_at.items()}

    async def wait_handled(
        self, handled: dict[str, dict[int, list[float]]], sentinel: SentinelSetup
    ) -> dict[str, int]:
        """Wait (20 s at most) until every acknowledged number was handled; how many of
        each kind were not. Call it once every send has returned, with the consumer still
        running: it also records when each missing one was acknowledged and where it is."""
        await until(lambda: all(self.acked[k] <= set(handled[k]) for k in handled), within=20)
        self.missing = {k: self.acked[k] - set(handled[k]) for k in handled}
        if any(self.missing.values()):
            where = lambda: _whereabouts(sentinel.primary(), self.ns, self)  # noqa: E731
            self.whereabouts = await anyio.to_thread.run_sync(where)
        return {k: len(v) for k, v in self.missing.items()}

    async def loop(self, kind: Kind) -> None:
        n = 0
        while self.running:
            try:
                with anyio.fail_after(20):
                    await kind.produce(self.flow, _name(kind, self.ns), {"n": n})
            except Exception as exc:  # not acknowledged: it may or may not exist
                self.failed[str(kind)].add(n)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                await anyio.sleep(0.05)
            else:
                self.acked_at[str(kind)][n] = time.monotonic()
            n += 1
            await anyio.sleep(0.005)


async def test_every_kind_through_a_sentinel_url(shared_sentinel: SentinelSetup, ns: str) -> None:
    """Handlers of every kind consume what producers send through the sentinels' URL, and
    the flow's connections all go to the primary the sentinels name."""
    seen: dict[str, list[Any]] = {str(k): [] for k in ALL}
    flow = make_flow(shared_sentinel.url, ns)
    for kind in ALL:
        kind.on(flow, _name(kind, ns))(_recorder(seen[str(kind)]))
    async with flow:
        for kind in ALL:
            await kind.produce(flow, _name(kind, ns), {"n": 1})
        await eventually(lambda: all(seen.values()), within=10, what=f"every kind: {seen}")
        primary = shared_sentinel.primary()
        replica = next(s for s in shared_sentinel.servers if s is not primary)
        assert [c for c in _clients(primary) if "name=redisflow:fetch" in c]
        assert not [c for c in _clients(replica) if "name=redisflow" in c]
    assert all(v == [{"n": 1}] for v in seen.values()), seen


def _recorder(into: list[Any]) -> Callable[[dict[str, Any]], Any]:
    async def handle(data: dict[str, Any]) -> None:
        into.append(data)

    return handle


@pytest.mark.parametrize("how", ["failover", "kill"])
async def test_a_failover_under_load_loses_nothing_acknowledged(
    sentinel: SentinelSetup, ns: str, how: str, figures: Callable[..., None]
) -> None:
    """Producers (``wait_replicas=1``) and consumers of every kind run while the primary is
    failed over (``SENTINEL FAILOVER``) or killed (SIGKILL): every acknowledged reliable
    message is handled, the flow reconnects to the new primary by itself, and after a
    graceful failover no connection stays on the old primary."""
    sent, lost, old = await _switch_under_load(sentinel, ns, how, 1, figures)
    assert lost == {k: 0 for k in sent.acked}, "\n".join([str(lost), *sent.whereabouts])
    if how == "failover":  # the old primary lives on as a replica of the new one
        assert not [c for c in _clients(old) if "name=redisflow" in c], _clients(old)


async def test_a_graceful_failover_loses_no_acknowledged_backlog(
    sentinel: SentinelSetup, ns: str, figures: Callable[..., None]
) -> None:
    """Producers (``wait_replicas=1``, two replicas) send while ``SENTINEL FAILOVER`` runs and
    nothing consumes: every acknowledged message is on the new primary. From the promotion
    until the sentinel reconfigures the other replica (~1 s), that replica still follows the
    old primary and acknowledges its writes, then drops them when it resyncs: a client that
    kept writing there until ``+switch-master`` lost ~500 of ~7,000 acknowledged messages
    here. The flow leaves the old primary when the failover begins (``+elected-leader``)."""
    kinds = [k for k in ALL if k.durable and not k.at_most_once]
    producer = Flow(sentinel.url, prefix=ns, wait_replicas=1, wait_timeout=1.0)
    for kind in kinds:  # the layout the consumer below declares, known to the producer
        if kind.partitions > 1:
            producer.partitions(_name(kind, ns), kind.partitions)
    sent = Sent(producer, ns, kinds)
    async with producer:
        async with anyio.create_task_group() as tg:
            for kind in kinds:
                tg.start_soon(sent.loop, kind)
            await anyio.sleep(1.0)
            sent.switch = began = time.monotonic()
            await anyio.to_thread.run_sync(sentinel.failover)
            switched = time.monotonic() - began
            acked_before = {k: len(v) for k, v in sent.acked_at.items()}
            await eventually(
                lambda: all(len(sent.acked_at[k]) > acked_before[k] + 20 for k in sent.acked_at),
                within=20,
                what="producing again after the failover",
            )
            sent.running = False
    handled: dict[str, dict[int, list[float]]] = {str(k): {} for k in kinds}
    consumer = make_flow(sentinel.url, ns)
    for kind in kinds:
        kind.on(consumer, _name(kind, ns), concurrency=8)(_numbers(handled[str(kind)]))
    async with consumer:
        lost = await sent.wait_handled(handled, sentinel)
    stalls = sorted(
        b - a for times in sent.acked_at.values()
        for a, b in itertools.pairwise(sorted(times.values()))
    )  # fmt: skip
    figures(
        primary_switch_seconds=round(switched, 2),
        longest_producer_stall_seconds=round(stalls[-1], 2),
        acknowledged={k: len(v) for k, v in sent.acked.items()},
        unacknowledged={k: len(v) for k, v in sent.failed.items()},
        lost=lost,
    )
    assert lost == {k: 0 for k in sent.acked}, "\n".join([str(lost), *sent.whereabouts])


def test_failover_events_are_read_as_sentinel_sends_them() -> None:
    """The events a failover publishes, as Redis 7.0's sentinel sent them in a recorded
    ``SENTINEL FAILOVER``: its start, a switch, an abort; other services and events are
    ignored (``test_a_graceful_failover_loses_no_acknowledged_backlog`` runs a real one)."""
    old, new = Address("127.0.0.1", 50401), Address("127.0.0.1", 59217)
    replica = "slave 127.0.0.1:59217 127.0.0.1 59217 @ mymaster 127.0.0.1 50401"
    assert failover_event("+elected-leader", "master mymaster 127.0.0.1 50401", "mymaster") == (
        "started",
        old,
        None,
    )
    assert failover_event("+selected-slave", replica, "mymaster") == ("started", old, None)
    assert failover_event("+promoted-slave", replica, "mymaster") == ("started", old, None)
    switch = "mymaster 127.0.0.1 50401 127.0.0.1 59217"
    assert failover_event("+switch-master", switch, "mymaster") == ("switched", old, new)
    abort = "master mymaster 127.0.0.1 50401"
    assert failover_event("-failover-abort-no-good-slave", abort, "mymaster") == (
        "aborted",
        old,
        None,
    )
    assert failover_event("+switch-master", switch, "other") is None
    assert failover_event("+selected-slave", replica, "other") is None
    assert failover_event("+sdown", "master mymaster 127.0.0.1 50401", "mymaster") is None
    assert failover_event("+switch-master", "mymaster garbage", "mymaster") is None


@pytest.mark.chaos
async def test_a_killed_primary_without_wait_loses_at_most_the_last_moment(
    sentinel: SentinelSetup, ns: str, figures: Callable[..., None]
) -> None:
    """Without ``wait_replicas``, a primary killed by SIGKILL takes with it what it had
    acknowledged but not yet sent to a replica: asynchronous replication. The figure says
    how much; every message lost was acknowledged in the last second before the kill, and
    the flow goes on on the new primary."""
    sent, lost, _ = await _switch_under_load(sentinel, ns, "kill", 0, figures)
    window = {k: {n for n, t in sent.acked_at[k].items() if t >= sent.switch - 1.0} for k in lost}
    for k, missing in sent.missing.items():
        assert missing <= window[k], (k, sorted(missing - window[k])[:10])


@pytest.mark.chaos
async def test_one_replica_with_wait_refuses_writes_until_it_is_back(
    redis_sentinel_factory: Callable[..., SentinelSetup], ns: str, figures: Callable[..., None]
) -> None:
    """With a single replica and ``wait_replicas=1``, a failover leaves the new primary
    without a replica until the old one rejoins: producers get ReplicationError meanwhile
    (nothing acknowledged is lost), then go on by themselves."""
    setup = redis_sentinel_factory(replicas=1, sentinels=3)
    sent, lost, _ = await _switch_under_load(setup, ns, "failover", 1, figures, within=40)
    assert lost == {k: 0 for k in sent.acked}, lost
    assert any("ReplicationError" in e for e in sent.errors), sent.errors[:3]


async def _switch_under_load(
    sentinel: SentinelSetup,
    ns: str,
    how: str,
    replicas: int,
    figures: Callable[..., None],
    within: float = 20,
) -> tuple[Sent, dict[str, int], Any]:
    kinds = [k for k in ALL if k.durable and not k.at_most_once]
    handled: dict[str, dict[int, list[float]]] = {str(k): {} for k in kinds}
    heard: list[float] = []
    consumer = make_flow(sentinel.url, ns)
    for kind in kinds:
        kind.on(consumer, _name(kind, ns), concurrency=8)(_numbers(handled[str(kind)]))

    @consumer.on_channel(f"{ns}:live")
    async def live(data: dict[str, Any]) -> None:
        heard.append(time.monotonic())

    producer = Flow(sentinel.url, prefix=ns, wait_replicas=replicas, wait_timeout=1.0)
    sent = Sent(producer, ns, kinds)
    old = sentinel.primary()
    async with consumer, producer:
        async with anyio.create_task_group() as tg:
            for kind in kinds:
                tg.start_soon(sent.loop, kind)
            await anyio.sleep(1.0)
            sent.switch = began = time.monotonic()
            if how == "failover":
                await anyio.to_thread.run_sync(sentinel.failover)
            else:
                await anyio.to_thread.run_sync(sentinel.kill_primary)
                await anyio.to_thread.run_sync(sentinel.wait_primary_change, old)
            switched = time.monotonic() - began
            acked_before = {k: len(v) for k, v in sent.acked_at.items()}
            await eventually(
                lambda: all(len(sent.acked_at[k]) > acked_before[k] + 20 for k in sent.acked_at),
                within=within,
                what="producing again after the switch",
            )
            resumed = time.monotonic() - began

            async def publish() -> bool:
                await producer.publish(f"{ns}:live", {"n": 0})
                return bool(heard)

            await eventually(publish, within=20, interval=0.1, what="a live message after it")
            sent.running = False
        # Only now, with every producer call returned, is the set of acknowledged messages
        # final: a call still in flight at ``running = False`` (a WAIT, a reconnect) may be
        # acknowledged after the check below would have passed, and be "lost" by the stop.
        lost = await sent.wait_handled(handled, sentinel)
    # consumers resumed: the first handling of a message acknowledged after the switch
    new = began + switched
    after = [
        handled[k][n][0] for k, acked in sent.acked_at.items() for n, t in acked.items()
        if t > new and n in handled[k]
    ]  # fmt: skip
    figures(
        how=how,
        wait_replicas=replicas,
        replicas=len(sentinel.servers) - 1,
        primary_switch_seconds=round(switched, 2),
        producing_again_seconds=round(resumed, 2),
        consuming_again_seconds=round(min(after, default=began) - began, 2),
        pubsub_again_seconds=round(heard[0] - began, 2),
        acknowledged={k: len(v) for k, v in sent.acked.items()},
        unacknowledged={k: len(v) for k, v in sent.failed.items()},
        lost=lost,
        duplicated={k: sum(len(t) - 1 for t in v.values()) for k, v in handled.items()},
    )
    return sent, lost, old


def _whereabouts(primary: Any, ns: str, sent: Sent) -> list[str]:
    """Each missing message: when it was acknowledged (seconds from the switch) and the keys
    of the primary holding it now (a queue, a leased batch, the delayed set... or none)."""
    found: dict[tuple[str, int], list[str]] = {}
    wanted = {(k, n) for k, ns_ in sent.missing.items() for n in ns_}
    for key in primary.call("KEYS", f"{ns}*", decode=False):
        kind = primary.call("TYPE", key)
        if kind == "list":
            values = primary.call("LRANGE", key, 0, -1, decode=False)
        elif kind == "zset":
            values = primary.call("ZRANGE", key, 0, -1, decode=False)
        elif kind == "stream":
            values = [b" ".join(e[1]) for e in primary.call("XRANGE", key, "-", "+", decode=False)]
        else:
            continue
        for k, n in wanted:
            needle = b'"n":%d}' % n
            if any(needle in v for v in values) and re.search(
                rf":{re.escape(k)}(?![-\w])", key.decode()
            ):
                found.setdefault((k, n), []).append(key.decode())
    return [
        f"{k} n={n} acked {sent.acked_at[k][n] - sent.switch:+.3f}s: {found.get((k, n), 'nowhere')}"
        for k, n in sorted(wanted)
    ]


def _numbers(into: dict[int, list[float]]) -> Callable[[dict[str, Any]], Any]:
    """A handler recording when each number was handled (twice: a duplicate)."""

    async def handle(data: dict[str, Any]) -> None:
        into.setdefault(data["n"], []).append(time.monotonic())

    return handle


def _clients(server: Any) -> list[str]:
    listing: str = server.call("CLIENT", "LIST")
    return [line for line in listing.splitlines() if "name=" in line]


async def test_wait_replicas_acknowledges_after_the_replica(
    shared_sentinel: SentinelSetup, ns: str
) -> None:
    """With ``wait_replicas=1`` every producer call returns once the replica has the
    write; asking for more replicas than exist raises ReplicationError (the message was
    written on the primary: the error says it may exist)."""
    flow = Flow(shared_sentinel.url, prefix=ns, wait_replicas=1, wait_timeout=2.0)
    replica = next(s for s in shared_sentinel.servers if s is not shared_sentinel.primary())
    async with flow:
        for kind in [k for k in ALL if k.durable and not k.at_most_once]:
            if kind.partitions > 1:
                flow.partitions(_name(kind, ns), kind.partitions)
            await kind.produce(flow, _name(kind, ns), {"n": 1})
            # on the replica now, not "soon": the call returned after WAIT
            assert replica.call("EXISTS", *kind.keys_of(_name(kind, ns))) == 1, kind
        ids = await flow.enqueue_many(f"{ns}:many", [{"n": i} for i in range(100)])
        assert replica.call("LLEN", f"{ns}:many") == len(ids) == 100
        began = time.monotonic()
        with pytest.raises(ReplicationError, match="only 1 of 2 replicas acknowledged"):
            await flow.enqueue(f"{ns}:more", {"n": 2}, wait_replicas=2)
        assert 1.5 < time.monotonic() - began < 10
        assert replica.call("LLEN", f"{ns}:more") == 1  # written: "it may exist"
        # concurrent callers share one WAIT per round trip, and every one is acknowledged
        await _gather([flow.enqueue(f"{ns}:burst", {"n": i}) for i in range(500)])
        assert replica.call("LLEN", f"{ns}:burst") == 500


async def _gather(calls: list[Any]) -> None:
    async def run(call: Any) -> None:
        await call

    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(run, call)


async def test_wait_replicas_without_replicas_raises(ns: str) -> None:
    """A server with no replica cannot acknowledge ``wait_replicas=1``: the call raises
    ReplicationError after ``wait_timeout``, and ``wait_aof`` on a server without AOF (or
    before Redis 7.2) raises with the server's refusal."""
    proc = start_redis()
    try:
        async with Flow(proc.url, prefix=ns, wait_replicas=1, wait_timeout=0.2) as flow:
            with pytest.raises(ReplicationError, match="only 0 of 1 replicas acknowledged"):
                await flow.append(f"{ns}:s", {"n": 1})
            assert await flow.enqueue(f"{ns}:q", {"n": 1}, wait_replicas=0)
        async with Flow(proc.url, prefix=ns, wait_replicas=1, wait_aof=True) as flow:
            with pytest.raises(ReplicationError, match="refused WAITAOF"):
                await flow.enqueue(f"{ns}:q", {"n": 2})
    finally:
        stop_redis(proc)


async def test_a_wrong_service_name_says_so(shared_sentinel: SentinelSetup, ns: str) -> None:
    """A service the sentinels do not monitor is a clear error naming it, not a hang."""
    url = shared_sentinel.url.replace(f"/{shared_sentinel.service}/", "/nosuchservice/")
    flow = Flow(url, prefix=ns, give_up_after=1)
    with pytest.raises(ConnectionLost, match="no sentinel knows a primary named 'nosuchservice'"):
        with anyio.fail_after(20):
            await flow.enqueue(f"{ns}:q", {"n": 1})
    await flow.aclose()


async def test_sentinels_with_a_password_of_their_own(
    redis_sentinel_factory: Callable[..., SentinelSetup], ns: str
) -> None:
    """Sentinels that require a password: without ``sentinel_password`` the error names the
    sentinel and the option (not a bare NOAUTH); with it, the flow works."""
    setup = redis_sentinel_factory(replicas=0, sentinels=1)
    setup.sentinels[0].call("ACL", "SETUSER", "default", "resetpass", ">Sentin3l")
    flow = Flow(setup.url, prefix=ns, give_up_after=1)
    with pytest.raises(AuthError) as refused:
        await flow.enqueue(f"{ns}:q", 1)
    await flow.aclose()
    message = str(refused.value)
    port = setup.sentinels[0].port
    assert f"sentinel at 127.0.0.1:{port}" in message and "sentinel_password" in message
    flow = Flow(f"{setup.url}?sentinel_password=Sentin3l", prefix=ns)
    try:
        assert await flow.enqueue(f"{ns}:q", 1)
    finally:
        await flow.aclose()


def test_the_cli_reads_through_the_sentinels(shared_sentinel: SentinelSetup, ns: str) -> None:
    """``redisflow stats`` and ``redisflow dlq list`` accept a sentinel URL."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "redisflow", *args, "--url", shared_sentinel.url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    done = cli("stats", "--prefix", ns)
    assert done.returncode == 0, done.stderr
    listed = cli("dlq", "list", "--queue", f"{ns}:q", "--prefix", ns, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [], listed.stdout


async def test_a_redis_py_client_for_the_same_url(shared_sentinel: SentinelSetup) -> None:
    """``flow.redis`` gives a redis-py client on the current primary (for what redisflow
    does not wrap)."""
    flow = Flow(shared_sentinel.url)
    try:
        client = flow.redis
        assert isinstance(client, aioredis.Redis)
        assert (await client.execute_command("ROLE"))[0] in (b"master", "master")
    finally:
        await flow.aclose()
