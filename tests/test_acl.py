"""Least privilege: every feature works under exactly the ACL docs/security.md gives for it
(users made with ``ACL SETUSER`` on the private server), a common application user without
``CLIENT UNBLOCK`` and ``INFO`` stops gracefully and can read the stats, and a refusal names
what was refused and the rule that would allow it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from redisflow import Flow, PermissionDenied, Reject
from tests.support.flows import eventually, make_flow
from tests.test_cli import cli, env_for, wait_for, write

# The rules of docs/security.md, "Least privilege" (keys and channels are added per test).
CONNECT = "+ping +hello +client|id +client|setname"
COMMON = f"-@all +@read +@write -@dangerous {CONNECT} +evalsha +script|load +time"
WORKER = f"{COMMON} +client|unblock"
SUBSCRIBER = "+subscribe +unsubscribe +psubscribe +punsubscribe"
PRODUCER = f"{COMMON} +publish"
READER = f"-@all +@read {CONNECT} +hdel"  # stats, dlq list/show


@pytest.fixture
async def users(r: aioredis.Redis, url: str, ns: str) -> AsyncIterator[Callable[..., str]]:
    """``users(name, rules)``: an ACL user on the test server; its URL."""
    made: list[str] = []

    async def make(name: str, rules: str) -> str:
        user = f"{ns}-{name}"
        await r.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", *rules.split())
        made.append(user)
        return url.replace("redis://", f"redis://{user}:pw@")

    yield make  # type: ignore[misc]
    for user in made:
        await r.execute_command("ACL", "DELUSER", user)


@pytest.mark.anyio
async def test_every_feature_under_its_minimal_acl(
    users: Callable[..., str], url: str, ns: str, tmp_path: Path
) -> None:
    """A worker (queue, priority, stream, a channel and a channel pattern) and a producer,
    each under its documented ACL restricted to its keys and channels; then ``stats`` and
    ``dlq list`` under the read-only rules."""
    q, pq, s, ch, pattern = f"{ns}q", f"{ns}pq", f"{ns}s", f"{ns}.ch", f"{ns}.news.*"
    keys = f"~{ns}:* ~{q} ~{pq} ~{s}"
    channels = f"&{ch} &{pattern}"  # the pattern itself, literally
    worker = make_flow(await users("worker", f"{WORKER} {SUBSCRIBER} {keys} {channels}"), ns)
    producing = await users("producer", f"{PRODUCER} {keys} &{ch} &{ns}.news.x")
    producer = Flow(producing, prefix=ns)
    seen: list[str] = []

    @worker.on_queue(q, max_attempts=1)
    async def on_queue(text: str) -> None:
        if text == "bad":
            raise Reject("to the dead letters")
        seen.append(f"q:{text}")

    @worker.on_priority(pq)
    async def on_priority(text: str) -> None:
        seen.append(f"pq:{text}")

    @worker.on_stream(s, group="g")
    async def on_stream(text: str) -> None:
        seen.append(f"s:{text}")

    @worker.on_channel(ch)
    async def on_channel(text: str) -> None:
        seen.append(f"ch:{text}")

    @worker.on_channel(pattern)
    async def on_pattern(text: str) -> None:
        seen.append(f"news:{text}")

    @worker.every(0.2, name=f"{ns}beat")  # its keys are all under the prefix
    async def beat() -> None:
        if "beat" not in seen:
            seen.append("beat")

    async with worker:
        await producer.enqueue(q, "a")
        await producer.enqueue(q, "bad")
        await producer.enqueue(q, "later", delay=0.3)
        await producer.enqueue_priority(pq, "b", priority=2)
        await producer.append(s, "c")
        assert await producer.publish(ch, "d") == 1
        assert await producer.publish(f"{ns}.news.x", "e") == 1
        want = {"q:a", "q:later", "pq:b", "s:c", "ch:d", "news:e", "beat"}
        await eventually(lambda: set(seen) == want, within=10, what="every kind consumed")
        await producer.pause(s)  # pausing and resuming: as a producer
        await eventually(lambda: all(c.parked for c in worker.consumers if c.key == s))
        assert await producer.resume(s)
        await producer.aclose()
        await eventually(lambda: worker.dlq(q).count(), what="one dead letter")
    reader = await users("reader", f"{READER} {keys}")
    res = cli(tmp_path, "stats", "--url", reader, "--prefix", ns, "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["source"]: r for r in json.loads(res.stdout)["handlers"]}
    assert rows[q]["counters"]["processed"] == 2 and rows[q]["dead_letters"] == 1, rows
    res = cli(tmp_path, "dlq", "list", q, "--kind", "queue", "--url", reader, "--prefix", ns)
    assert res.returncode == 0 and "to the dead letters" in res.stdout, res.stderr + res.stdout
    for action in (["replay"], ["purge", "--all"]):  # as a producer
        res = cli(tmp_path, "dlq", action[0], q, "--kind", "queue", *action[1:],
                  "--url", producing, "--prefix", ns)  # fmt: skip
        assert res.returncode == 0, res.stderr
    res = cli(tmp_path, "dlq", "list", q, "--kind", "queue", "--url", reader, "--prefix", ns)
    assert "0 dead letters" in res.stdout, res.stdout


SLOW_APP = """\
import anyio
from redisflow import Flow

flow = Flow(prefix={ns!r}, block_timeout=2, grace_period=10)


@flow.on_queue({queue!r})
async def slow(n: int) -> None:
    await flow.redis.rpush({started!r}, n)
    await anyio.sleep(1.5)
    await flow.redis.rpush({done!r}, n)


@flow.on_stream({stream!r}, group="g")
async def events(n: int) -> None:
    pass
"""


def test_an_app_user_without_unblock_and_info_stops_gracefully(
    url: str, ns: str, tmp_path: Path
) -> None:
    """``+@all -@dangerous`` lacks ``CLIENT UNBLOCK`` and ``INFO``: SIGTERM still lets the
    running handler finish and exits 0 within the block timeout (no ExceptionGroup), and
    ``redisflow stats`` works without the server's memory figure."""
    r = redis.Redis.from_url(url)
    user = f"{ns}-app"
    r.execute_command("ACL", "SETUSER", user, "on", ">pw", "+@all", "-@dangerous", "~*", "&*")
    url = url.replace("redis://", f"redis://{user}:pw@")
    queue, started, done = f"{ns}:jobs", f"{ns}:started", f"{ns}:done"
    source = SLOW_APP.format(ns=ns, queue=queue, started=started, done=done, stream=f"{ns}:s")
    write(tmp_path, "slow_app", source)
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "redisflow", "run", "slow_app:flow", "--url", url],
            cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: log.read_text().count(" -> ") == 2, 30, "started")
        r.rpush(queue, "1")
        wait_for(lambda: bool(r.llen(started)), 10, "the handler runs")
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        took = time.monotonic() - stopping
        done_items = r.lrange(done, 0, -1)
        res = cli(tmp_path, "stats", "slow_app:flow", "--url", url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        r.execute_command("ACL", "DELUSER", user)
        r.close()
    text = log.read_text()
    assert done_items == [b"1"], text  # the handler finished
    assert "ExceptionGroup" not in text and "Traceback" not in text, text
    assert "cannot unblock the fetch" in text
    assert took < 2 + 3, took  # the block timeout bounds the stop (+ start-up slack)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("redisflow stats") and "used memory" not in res.stdout
    assert queue in res.stdout


@pytest.mark.anyio
async def test_a_refusal_names_the_key_or_command_and_the_rule(
    users: Callable[..., str], ns: str
) -> None:
    """NOPERM on a key names the key and a ``~`` pattern that allows it; on a command,
    the ``+command`` rule."""
    flow = Flow(await users("narrow", f"{PRODUCER} ~{ns}:*"), prefix=ns)
    try:
        with pytest.raises(PermissionDenied) as refused:
            await flow.enqueue(f"{ns}jobs", 1)
        assert f"~{ns}jobs" in str(refused.value) and "docs/security.md" in str(refused.value)
        with pytest.raises(PermissionDenied) as refused:
            await flow.client.connector.send("CONFIG", "GET", "maxmemory")
        assert "+config" in str(refused.value)
    finally:
        await flow.aclose()


@pytest.mark.anyio
async def test_a_permission_revoked_mid_run_stops_the_flow_at_once(
    users: Callable[..., str], ns: str, r: aioredis.Redis
) -> None:
    """The worker's user loses access to its queue: the fetch fails with PermissionDenied
    and the flow stops, instead of retrying forever."""
    url = await users("revoked", f"{WORKER} ~{ns}:* ~{ns}q")
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}q")
    async def handle(n: int) -> None:
        pass

    started = time.monotonic()
    with pytest.raises(PermissionDenied):
        async with flow:
            await r.execute_command("ACL", "SETUSER", f"{ns}-revoked", "resetkeys", f"~{ns}:*")
            await anyio.sleep(10)
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_a_permission_revoked_mid_run_names_the_key(
    users: Callable[..., str], r: aioredis.Redis, ns: str
) -> None:
    """The worker's user loses access to its stream while it waits in a blocking read: the
    flow fails with a PermissionDenied that names the key it was fetching from (the NOPERM
    of a blocked XREADGROUP does not)."""
    s = f"{ns}s"
    user_url = await users("worker", f"{WORKER} ~{ns}:* ~{s}")
    flow = make_flow(user_url, ns, block_timeout=0.5)

    @flow.on_stream(s, group="g")
    async def handle(n: int) -> None:
        pass

    with pytest.raises(PermissionDenied) as denied:
        async with flow:
            await r.execute_command("ACL", "SETUSER", f"{ns}-worker", "resetkeys", f"~{ns}:*")
            with anyio.fail_after(20):
                await anyio.sleep_forever()
    assert repr(s) in str(denied.value) or f"~{s}" in str(denied.value), denied.value
