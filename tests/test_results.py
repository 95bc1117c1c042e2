"""Results and request/reply (issue 20): every kind answers a request, failures raise
RemoteError with where and why, a timeout leaves the message to run and its result can be
fetched later, results expire and leave nothing behind, 1,000 concurrent requests share a
few connections, and it works on a cluster and across ``redisflow run --workers``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from redisflow import Flow, Message, Reject, RemoteError, RequestTimeout
from redisflow.errors import ConfigError
from redisflow.testing import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.support.proxy import Proxy
from tests.test_cli import ready_pids, run_workers

pytestmark = pytest.mark.anyio


class Resize(BaseModel):
    width: int


class Thumb(BaseModel):
    url: str
    width: int


class Other(BaseModel):
    height: int


def resizing(flow: Flow, ns: str) -> dict[str, str]:
    """One handler per kind, each returning a Thumb; the names of their sources."""
    names = {k: f"{ns}:{k}" for k in ("queue", "priority", "stream", "channel")}

    async def resize(job: Resize, msg: Message[Resize]) -> Thumb:
        return Thumb(url=f"{msg.source.kind}/{job.width}.png", width=job.width)

    flow.on_queue(names["queue"])(resize)
    flow.on_priority(names["priority"])(resize)
    flow.on_stream(names["stream"], group="g")(resize)
    flow.on_channel(names["channel"])(resize)
    return names


@pytest.mark.parametrize("kind", ["queue", "priority", "stream", "channel"])
async def test_request_is_answered_by_the_handler_of_each_kind(
    url: str, ns: str, kind: Any
) -> None:
    flow = make_flow(url, ns)
    names = resizing(flow, ns)
    async with flow:
        thumb = await flow.request(names[kind], Resize(width=7), kind=kind, timeout=10, model=Thumb)
        raw = await flow.request(names[kind], {"width": 8}, kind=kind, timeout=10)
    # Read once the flow has stopped: a requester can wake on the result before the worker
    # that wrote it has counted it (stop lets that worker finish).
    written = sum(c.stats.results for c in flow.consumers)  # stats --json counts them
    assert written == 2
    assert thumb == Thumb(url=f"{kind}/7.png", width=7)
    assert raw == {"url": f"{kind}/8.png", "width": 8}


async def test_enqueue_with_result_ttl_then_result(url: str, ns: str, r: aioredis.Redis) -> None:
    """``result_ttl=`` on a send keeps the result for ``result(id)``; a message that did
    not ask keeps none; ``result(id, timeout=0)`` is None while there is none yet."""
    flow = make_flow(url, ns)
    names = resizing(flow, ns)
    gate = anyio.Event()

    @flow.on_queue(f"{ns}:slow")
    async def slow(job: Resize) -> int:
        await gate.wait()
        return job.width * 2

    async with flow:
        mid = await flow.enqueue(names["queue"], Resize(width=3), result_ttl=60)
        assert mid is not None
        thumb = await flow.result(mid, timeout=10, model=Thumb)
        assert thumb == Thumb(url="queue/3.png", width=3)
        plain = await flow.enqueue(names["queue"], Resize(width=4))
        assert plain is not None
        await flow.wait_idle(10)
        assert await flow.result(plain) is None  # not asked for: nothing kept
        entry = await flow.append(names["stream"], Resize(width=5), result_ttl=60)
        assert entry is not None
        assert (await flow.result(entry, timeout=10, stream=names["stream"]))["width"] == 5
        pid = await flow.enqueue_priority(names["priority"], {"width": 6}, result_ttl=60)
        assert pid is not None
        assert (await flow.result(pid, timeout=10))["width"] == 6
        waiting = await flow.enqueue(f"{ns}:slow", Resize(width=21), result_ttl=60)
        assert waiting is not None
        assert await flow.result(waiting, timeout=0) is None  # not done yet
        assert await flow.result(waiting, timeout=0.2) is None
        later = asyncio.ensure_future(flow.result(waiting, timeout=10))
        twin = asyncio.ensure_future(flow.result(waiting, timeout=10))
        await anyio.sleep(0.1)
        assert len(flow.inbox.subs) == 1  # two waits, one subscription
        gate.set()
        assert await later == 42  # pushed to a wait that began before the result
        assert await twin == 42
        assert await flow.result(waiting) == 42  # and kept for those who come later
    ttl = await r.pttl(f"{ns}:result:{{{waiting}}}")
    assert 50_000 < ttl <= 60_000


async def test_timeout_leaves_the_message_to_run_and_result_fetches_it(url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    started = anyio.Event()
    release = anyio.Event()

    @flow.on_queue(f"{ns}:slow")
    async def slow(job: Resize) -> Thumb:
        started.set()
        await release.wait()
        return Thumb(url="late.png", width=job.width)

    async with flow:
        with pytest.raises(TimeoutError) as caught:
            await flow.request(f"{ns}:slow", Resize(width=9), timeout=0.3, model=Thumb)
        assert isinstance(caught.value, RequestTimeout)
        assert started.is_set()  # it was sent, and runs
        release.set()
        thumb = await flow.result(caught.value.id, timeout=10, model=Thumb)
    assert thumb == Thumb(url="late.png", width=9)


async def test_failures_raise_remote_error_with_where_and_the_error(url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    attempts: list[int] = []

    @flow.on_queue(f"{ns}:fails", max_attempts=2, retry_delay=0)
    async def fails(job: Resize, msg: Message[Resize]) -> None:
        attempts.append(msg.attempt)
        raise ValueError(f"width {job.width} is too wide")

    @flow.on_queue(f"{ns}:rejects")
    async def rejects(job: Resize) -> None:
        raise Reject("not a picture")

    @flow.on_channel(f"{ns}:ch")
    async def channel_fails(job: Resize) -> None:
        raise RuntimeError("channel broke")

    async with flow:
        with pytest.raises(RemoteError) as dead:
            await flow.request(f"{ns}:fails", Resize(width=5), timeout=10)
        with pytest.raises(RemoteError) as rejected:
            await flow.request(f"{ns}:rejects", Resize(width=5), timeout=10)
        with pytest.raises(RemoteError) as invalid:
            await flow.request(f"{ns}:rejects", {"width": "wide"}, timeout=10)
        with pytest.raises(RemoteError) as on_channel:
            await flow.request(f"{ns}:ch", Resize(width=1), kind="channel", timeout=10)
        with pytest.raises(RemoteError) as nobody:
            await flow.request(f"{ns}:nobody", Resize(width=1), kind="channel", timeout=10)
        mid = await flow.enqueue(f"{ns}:rejects", Resize(width=1), result_ttl=60)
        assert mid is not None
        with pytest.raises(RemoteError) as later:
            await flow.result(mid, timeout=10)
    assert attempts == [1, 2]  # a retried failure writes nothing: the retry ran
    assert (dead.value.where, dead.value.error) == (
        "dead-lettered", "ValueError: width 5 is too wide"
    )  # fmt: skip
    assert (rejected.value.where, rejected.value.error) == ("rejected", "rejected: not a picture")
    assert invalid.value.where == "dead-lettered"
    assert "invalid payload" in invalid.value.error and "width" in invalid.value.error
    assert on_channel.value.where == "dead-lettered"
    assert "channel broke" in on_channel.value.error
    assert nobody.value.where == "undelivered"
    assert later.value.where == "rejected" and later.value.id == mid


async def test_model_validation_good_and_bad(url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    names = resizing(flow, ns)
    async with flow:
        good = await flow.request(names["queue"], Resize(width=2), timeout=10, model=Thumb)
        with pytest.raises(ValidationError):
            await flow.request(names["queue"], Resize(width=2), timeout=10, model=Other)
        as_dict = await flow.request(
            names["queue"], Resize(width=2), timeout=10, model=dict[str, Any]
        )
    assert good == Thumb(url="queue/2.png", width=2)
    assert as_dict == {"url": "queue/2.png", "width": 2}


async def test_results_expire_and_leave_nothing_behind(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    flow = make_flow(url, ns)
    names = resizing(flow, ns)
    async with flow:
        assert await flow.request(names["queue"], Resize(width=1), timeout=10, result_ttl=3)
        mid = await flow.enqueue(names["queue"], Resize(width=2), result_ttl=3)
        assert mid is not None
        assert await flow.result(mid, timeout=10) is not None
        assert len([k async for k in r.scan_iter(f"{ns}:result:*")]) == 2
        await anyio.sleep(3.5)
        assert await flow.result(mid) is None
        left = [k async for k in r.scan_iter(f"{ns}:result:*")]
        channels = await r.execute_command("PUBSUB", "SHARDCHANNELS", f"{ns}:reply:*")
    assert left == []
    assert channels == []  # every wait unsubscribed


async def test_a_handler_option_keeps_every_result(url: str, ns: str) -> None:
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:kept", result_ttl=60)
    async def kept(job: Resize) -> int:
        return job.width + 1

    async with flow:
        mid = await flow.enqueue(f"{ns}:kept", Resize(width=1))
        assert mid is not None
        assert await flow.result(mid, timeout=10) == 2
    with pytest.raises(ConfigError, match="result_ttl"):
        flow.on_queue(f"{ns}:bad", result_ttl=0)(kept)


async def test_batch_handlers_answer_null_and_failures(url: str, ns: str) -> None:
    """A batch handler's return value is for the batch: each message that asks gets a
    null result; one it rejects gets RemoteError."""
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:batch", batch=10, batch_wait=0.05)
    async def many(jobs: list[Resize]) -> int:
        from redisflow import BatchFailed

        bad = {i: Reject("odd") for i, job in enumerate(jobs) if job.width % 2}
        if bad:
            raise BatchFailed(bad)
        return len(jobs)

    async with flow:
        even = flow.request(f"{ns}:batch", Resize(width=2), timeout=10)
        odd = flow.request(f"{ns}:batch", Resize(width=3), timeout=10)
        results = await asyncio.gather(even, odd, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], RemoteError) and results[1].where == "rejected"


async def test_a_thousand_concurrent_requests_share_a_few_connections(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:echo", concurrency=64)
    async def echo(n: int) -> int:
        await anyio.sleep(0.2)  # every request waits at once
        return n * 2

    async with flow:
        before = len(await r.client_list())
        peak = 0

        async def count() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(await r.client_list()))
                await anyio.sleep(0.05)

        watcher = asyncio.ensure_future(count())
        answers = await asyncio.gather(
            *(flow.request(f"{ns}:echo", n, timeout=60) for n in range(1000))
        )
        watcher.cancel()
        inbox = [c for c in await r.client_list() if c.get("name", "").endswith(":inbox")]
    assert answers == [n * 2 for n in range(1000)]
    assert len(inbox) == 1  # one Pub/Sub connection for every wait
    assert peak - before <= 3, (before, peak)


def slow_queue(flow: Flow, ns: str) -> tuple[anyio.Event, anyio.Event]:
    """A handler of ``<ns>:slow`` that answers ``n + 1`` once released: its events
    ``(started, release)``."""
    started, release = anyio.Event(), anyio.Event()

    @flow.on_queue(f"{ns}:slow")
    async def slow(n: int) -> int:
        started.set()
        await release.wait()
        return n + 1

    return started, release


async def test_a_dropped_inbox_connection_subscribes_again(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A wait whose Pub/Sub connection is killed subscribes again and still gets its
    result (published after the kill, or found in its record)."""
    flow = make_flow(url, ns)
    _, release = slow_queue(flow, ns)

    async with flow:
        waiting = asyncio.ensure_future(flow.request(f"{ns}:slow", 1, timeout=20))
        await eventually(lambda: flow.inbox.subs, what="subscribed")
        (inbox,) = [c for c in await r.client_list() if c.get("name", "").endswith(":inbox")]
        await r.client_kill_filter(_id=inbox["id"])
        await anyio.sleep(0.2)
        release.set()
        assert await waiting == 2


class SilencingProxy(Proxy):
    """A TCP proxy in front of Redis that can make the inbox connections open now go
    silent both ways while staying open (a half-open connection: nothing is delivered,
    nothing fails); connections opened later are forwarded."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.inboxes: list[list[bool]] = []  # one [silenced] flag per inbox connection

    def silence(self) -> int:
        """Silence every inbox connection open now; how many."""
        for flag in self.inboxes:
            flag[0] = True
        return len(self.inboxes)

    async def pipe(self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream) -> None:
        silenced = [False]
        async with anyio.create_task_group() as tg:

            async def up() -> None:
                async for chunk in client:
                    if b":inbox" in chunk and silenced not in self.inboxes:
                        self.inboxes.append(silenced)
                    if not silenced[0]:
                        await server.send(chunk)
                tg.cancel_scope.cancel()

            async def down() -> None:
                async for chunk in server:
                    if not silenced[0]:
                        await client.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(up)
            tg.start_soon(down)


async def test_a_silent_inbox_connection_is_found_by_its_heartbeat(url: str, ns: str) -> None:
    """A wait whose Pub/Sub connection goes silent without failing (its result's push is
    lost in it) is not left to its timeout: the PING after ``heartbeat`` seconds of silence
    goes unanswered, the connection is dropped, and the wait subscribes again and finds its
    record."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proxy = SilencingProxy(port)
    worker = make_flow(url, ns)
    started, release = slow_queue(worker, ns)

    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        caller = make_flow(f"redis://127.0.0.1:{proxy.port}/0", ns)
        caller.inbox.heartbeat = 0.5
        async with worker:
            waiting = asyncio.ensure_future(caller.request(f"{ns}:slow", 1, timeout=30))
            with anyio.fail_after(10):
                await started.wait()
            assert proxy.silence() == 1
            release.set()  # its push goes into the silent connection
            with anyio.fail_after(10):  # the request's own timeout is 30 s
                assert await waiting == 2
            assert len(proxy.inboxes) == 2, "subscribed again on a new connection"
        await caller.aclose()
        tg.cancel_scope.cancel()
    await worker.aclose()


@pytest.mark.parametrize("kind", ["queue", "stream", "channel"])
async def test_requests_on_a_cluster(redisflow_cluster: Any, ns: str, kind: Any) -> None:
    """Results live in their id's slot, pushed by SPUBLISH there; a process waits on one
    connection per node at most."""
    flow = make_flow(redisflow_cluster.seed_url, ns)
    names = resizing(flow, ns)
    async with flow:
        got = await asyncio.gather(
            *(flow.request(names[kind], Resize(width=n), kind=kind, timeout=20, model=Thumb)
              for n in range(50))
        )  # fmt: skip
        mid = await flow.enqueue(names["queue"], Resize(width=99), result_ttl=60)
        assert mid is not None
        later = await flow.result(mid, timeout=10, model=Thumb)
        nodes = len(flow.inbox.nodes)
    assert [t.width for t in got] == list(range(50))
    assert later.width == 99
    assert 1 <= nodes <= 3


async def test_a_wait_follows_its_result_slot_to_another_node(
    redisflow_cluster: RedisCluster, ns: str
) -> None:
    """Redis drops a shard channel's subscribers when its slot moves (``sunsubscribe``):
    the inbox subscribes again on the new owner, where the handler's script writes the
    record and pushes it, and the request gets its answer."""
    cluster = redisflow_cluster
    worker = make_flow(cluster.seed_url, ns)
    started, release = slow_queue(worker, ns)

    caller = make_flow(cluster.seed_url, ns)
    async with worker:
        waiting = asyncio.ensure_future(caller.request(f"{ns}:slow", 1, timeout=30))
        with anyio.fail_after(10):
            await started.wait()
        (channel,) = caller.inbox.subs
        slot = cluster.slot_of(channel)
        source = cluster.owner(slot)
        target = next(m for m in cluster.masters() if m is not source)
        sub = caller.inbox.subs[channel]
        before = sub.node
        await anyio.to_thread.run_sync(cluster.move_slots, [slot], target)
        await eventually(lambda: sub.node not in (None, before) and sub.ready.done(),
                         what="subscribed again, on another connection")  # fmt: skip
        release.set()
        with anyio.fail_after(15):
            assert await waiting == 2
        assert cluster.owner(slot) is target
    await caller.aclose()
    await worker.aclose()


WORKER_APP = """
from redisflow import Flow

flow = Flow({url!r}, prefix={ns!r})


@flow.on_queue({queue!r})
async def square(n: int) -> dict[str, int]:
    import os
    return {{"square": n * n, "pid": os.getpid()}}
"""


async def test_a_worker_process_answers(url: str, ns: str, tmp_path: Path) -> None:
    """``redisflow run --workers 2``: requests from this process are answered by the
    worker processes."""
    queue = f"{ns}:squares"
    (tmp_path / "worker_app.py").write_text(WORKER_APP.format(url=url, ns=ns, queue=queue))
    log = tmp_path / "worker.log"
    proc = run_workers(tmp_path, "worker_app:flow", log)
    try:
        await eventually(lambda: len(ready_pids(log)) == 2, 30, "2 workers ready")
        flow = Flow(url, prefix=ns)
        answers = await asyncio.gather(*(flow.request(queue, n, timeout=20) for n in range(20)))
        await flow.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [a["square"] for a in answers] == [n * n for n in range(20)]
    assert {a["pid"] for a in answers} <= set(ready_pids(log))


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


async def test_the_readme_example_requests_and_fetches_results(url: str, ns: str) -> None:
    """The "Results and request/reply" section of the README, run as written (on the test
    server, its queue under this test's prefix)."""
    section = README.split("## Results and request/reply", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "flow = Flow()" in code and '"resize"' in code
    code = code.replace("Flow()", f"Flow({url!r}, prefix={ns!r})")
    scope: dict[str, Any] = {}
    code = code.replace('on_queue("resize")', 'on_queue("resize", retry_delay=0.01)')  # quick
    exec(code.replace('"resize"', repr(f"{ns}:resize")), scope)
    flow: Flow = scope["flow"]
    async with flow:
        thumb, later, failure = await scope["caller"]()
    assert thumb == scope["Thumb"](url="a.png?w=64")
    assert later == scope["Thumb"](url="b.png?w=32")
    assert failure == "dead-lettered: ValueError: too wide"


async def test_results_under_the_documented_acl(url: str, ns: str, r: aioredis.Redis) -> None:
    """docs/security.md's rules for results: a worker with ``+spublish &PREFIX:reply:*``
    answers, a caller with ``+ssubscribe +sunsubscribe &PREFIX:reply:*`` gets the answer;
    without the channel rule the worker cannot push (the request times out)."""
    connect = "+ping +hello +client|id +client|setname"
    common = f"-@all +@read +@write -@dangerous {connect} +evalsha +script|load +time"
    queue = f"{ns}jobs"
    keys = f"~{ns}:* ~{queue}"
    rules = {
        "w": f"{common} +client|unblock {keys} +spublish &{ns}:reply:*",
        "c": f"{common} +publish {keys} +ssubscribe +sunsubscribe &{ns}:reply:*",
        "bad": f"{common} +client|unblock {keys}",
    }
    for name, rule in rules.items():
        await r.execute_command(
            "ACL", "SETUSER", f"{ns}{name}", "reset", "on", ">pw", *rule.split()
        )
    as_user = {n: url.replace("redis://", f"redis://{ns}{n}:pw@") for n in rules}
    try:
        for worker_user, answered in (("w", True), ("bad", False)):
            worker = make_flow(as_user[worker_user], ns)

            @worker.on_queue(queue, max_attempts=1)
            async def double(n: int) -> int:
                return n * 2

            caller = Flow(as_user["c"], prefix=ns)
            async with worker:
                if answered:
                    assert await caller.request(queue, 21, timeout=10) == 42
                else:
                    with pytest.raises((TimeoutError, RemoteError)):
                        await caller.request(queue, 21, timeout=2)
            await caller.aclose()
    finally:
        for name in rules:
            await r.execute_command("ACL", "DELUSER", f"{ns}{name}")


async def test_a_request_through_a_sentinel_url(redis_sentinel_factory: Any, ns: str) -> None:
    """The inbox follows the primary the sentinels name, as every other link does."""
    setup = redis_sentinel_factory(replicas=1, sentinels=1)
    flow = make_flow(setup.url, ns)
    names = resizing(flow, ns)
    async with flow:
        thumb = await flow.request(names["queue"], Resize(width=4), timeout=20, model=Thumb)
        inbox = [c for c in setup.primary().client().client_list() if c["name"].endswith("inbox")]
    assert thumb.width == 4
    assert len(inbox) == 1


def test_a_client_waits_again_on_a_new_event_loop(url: str, ns: str) -> None:
    """A client whose first loop ended (``asyncio.run`` twice) waits on new connections."""
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:kept", result_ttl=60)
    async def kept(n: int) -> int:
        return n + 1

    async def once(n: int) -> Any:
        async with flow:
            mid = await flow.enqueue(f"{ns}:kept", n)
            assert mid is not None
            return await flow.result(mid, timeout=10)

    caller = Flow(url, prefix=ns)

    async def ask(n: int) -> Any:  # the caller's connections are left open on purpose
        return await caller.request(f"{ns}:kept", n, timeout=10)

    async def both(n: int) -> tuple[Any, Any]:
        async with flow:
            return await ask(n), await flow.result(str(n), timeout=0)

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 3
    assert asyncio.run(both(3))[0] == 4
    assert asyncio.run(both(4))[0] == 5  # the caller's inbox, on a new loop


async def test_a_payload_holding_the_header_name_asks_for_nothing(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """The consumers' quick test searches the whole item: a payload with the text
    ``"rf-result"`` in it is looked at closely, and writes no result."""
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:q")
    async def handle(data: dict[str, str]) -> str:
        return "done"

    async with flow:
        mid = await flow.enqueue(f"{ns}:q", {"rf-result": "60000"})
        await flow.wait_idle(10)
        written = sum(c.stats.results for c in flow.consumers)
        processed = sum(c.stats.processed for c in flow.consumers)
    assert (written, processed) == (0, 1)
    assert mid is not None and await r.exists(f"{ns}:result:{{{mid}}}") == 0
