"""Middleware: the consume chain around every handler attempt and the produce chain around
every send, for every kind, against a real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import ConfigError, Flow, Message, Middleware, Outgoing, Reject, Retry
from tests.support.kinds import ALL, DURABLE, LISTY, Kind, by_kind

pytestmark = pytest.mark.anyio

FAST = {"retry_delay": 0.01, "retry_max_delay": 0.01}
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


class Recorder(Middleware):
    """Records the order of the calls it wraps, under its name."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name, self.trail = name, trail

    async def consume(self, msg: Message[Any], call_next: Any) -> Any:
        self.trail.append(f"{self.name}:consume:in")
        try:
            return await call_next(msg)
        finally:
            self.trail.append(f"{self.name}:consume:out")

    async def produce(self, out: Outgoing, call_next: Any) -> Any:
        self.trail.append(f"{self.name}:produce:in")
        try:
            return await call_next(out)
        finally:
            self.trail.append(f"{self.name}:produce:out")


class Stamp(Middleware):
    """Sets a header on every send; reads it back on every handler attempt."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.outgoing: list[Outgoing] = []

    async def produce(self, out: Outgoing, call_next: Any) -> Any:
        out.headers["x-stamp"] = f"{out.reason}:{out.kind}:{out.name}"
        self.outgoing.append(out)
        return await call_next(out)

    async def consume(self, msg: Message[Any], call_next: Any) -> Any:
        self.seen.append(dict(msg.headers))
        return await call_next(msg)


async def test_order_first_registered_is_outermost_on_both_sides(url: str, ns: str) -> None:
    trail: list[str] = []
    flow = Flow(url, prefix=ns, middleware=[Recorder("a", trail)])
    flow.add_middleware(Recorder("b", trail))
    done = anyio.Event()

    @flow.on_queue(f"{ns}:q")
    async def handle(payload: dict[str, int]) -> None:
        trail.append("handler")
        done.set()

    async with flow:
        await flow.enqueue(f"{ns}:q", {"n": 1})
        with anyio.fail_after(10):
            await done.wait()
        await flow.wait_idle()
    # The two sides race (the push wakes the consumer while its reply travels back to the
    # producer): each side's order is what is promised, not how they interleave.
    produced = [t for t in trail if ":produce:" in t]
    consumed = [t for t in trail if ":produce:" not in t]
    assert produced == ["a:produce:in", "b:produce:in", "b:produce:out", "a:produce:out"]
    assert consumed == [
        "a:consume:in", "b:consume:in", "handler", "b:consume:out", "a:consume:out",
    ]  # fmt: skip


@by_kind([k for k in ALL if k.kind != "channel"])
async def test_a_produce_header_reaches_the_consumer(kind: Kind, url: str, ns: str) -> None:
    stamp = Stamp()
    flow = Flow(url, prefix=ns, middleware=[stamp])
    name = kind.name(ns)
    got: list[dict[str, str]] = []

    @kind.on(flow, name)
    async def handle(payload: Any, msg: Message[Any]) -> None:
        got.append(dict(msg.headers))

    async with flow:
        await kind.produce(flow, name, {"n": 1}, headers={"mine": "1"})
        await kind.produce_many(flow, name, [{"n": 2}, {"n": 3}])
        await flow.wait_idle()
    assert len(got) == 3
    stamped = f"send:{kind.kind}:{name}"
    assert all(h.get("x-stamp") == stamped for h in got), got
    assert sum(h.get("mine") == "1" for h in got) == 1  # the caller's headers are kept
    assert [h.get("x-stamp") for h in stamp.seen] == [stamped] * 3  # consume side sees them
    assert [out.many for out in stamp.outgoing] == [False, True]


async def test_channel_headers_are_opt_in(url: str, ns: str, r: aioredis.Redis) -> None:
    """Without the switch a middleware's headers stay off the wire (plain JSON for other
    subscribers); with it they reach the consumer."""
    raw: list[bytes] = []
    for switch in (False, True):
        stamp = Stamp()
        flow = Flow(url, prefix=ns, middleware=[stamp], channel_headers=switch)
        got: list[dict[str, str]] = []
        channel = f"{ns}:ch:{switch}"

        @flow.on_channel(channel)
        async def handle(payload: Any, msg: Message[Any], got: list[Any] = got) -> None:
            got.append(dict(msg.headers))

        async with flow:
            async with r.pubsub() as pubsub:  # another client's subscriber
                await pubsub.subscribe(channel)
                await flow.publish(channel, {"n": 1})
                while (found := await pubsub.get_message(timeout=5)) is not None:
                    if found["type"] == "message":
                        raw.append(found["data"])
                        break
            await flow.wait_idle()
        assert len(got) == 1
        assert ("x-stamp" in got[0]) is switch
        assert got[0]["channel"] == channel
    assert raw[0] == b'{"n":1}'  # switched off: bare JSON
    assert raw[1].startswith(b"\x1e")  # switched on: the envelope


@by_kind(ALL)
async def test_an_exception_in_a_consume_middleware_fails_the_attempt(
    kind: Kind, url: str, ns: str
) -> None:
    """Retried, then dead-lettered, like a handler's exception; the handler never runs."""

    class Broken(Middleware):
        calls = 0

        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            Broken.calls += 1
            raise RuntimeError(f"broken on attempt {msg.attempt}")

    flow = Flow(url, prefix=ns, middleware=[Broken()])
    name = kind.name(ns)
    ran = []

    @kind.on(flow, name, max_attempts=3, **FAST)
    async def handle(payload: Any) -> None:
        ran.append(payload)

    async with flow:
        await kind.produce(flow, name, {"n": 1})
        await flow.wait_idle()
        letters = await flow.dlq(name).list()
    assert ran == []
    attempts = 1 if kind.kind == "channel" else 3  # a channel handler: max_attempts=3 too
    assert kind.kind == "channel" or Broken.calls == attempts
    assert len(letters) == 1
    assert letters[0].error.startswith("RuntimeError: broken on attempt")


@by_kind(DURABLE)
async def test_retry_and_reject_work_from_a_middleware(kind: Kind, url: str, ns: str) -> None:
    class Steer(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            if msg.payload["n"] == 1 and msg.attempt == 1:
                raise Retry(delay=0.01, reason="once more")
            if msg.payload["n"] == 2:
                raise Reject("no twos")
            return await call_next(msg)

    flow = Flow(url, prefix=ns, middleware=[Steer()])
    name = kind.name(ns)
    handled: list[tuple[int, int]] = []

    @kind.on(flow, name, max_attempts=5)
    async def handle(payload: dict[str, int], msg: Message[Any]) -> None:
        handled.append((payload["n"], msg.attempt))

    async with flow:
        await kind.produce(flow, name, {"n": 1})
        await kind.produce(flow, name, {"n": 2})
        await flow.wait_idle()
        letters = await flow.dlq(name).list()
    assert handled == [(1, 2)]
    assert [letter.error for letter in letters] == ["rejected: no twos"]


@by_kind(LISTY)
async def test_a_framework_retry_goes_through_the_produce_chain(
    kind: Kind, url: str, ns: str
) -> None:
    """A queue retry writes its item again: the produce chain sees it (reason, id,
    attempt) and may change its headers."""
    stamp = Stamp()
    flow = Flow(url, prefix=ns, middleware=[stamp])
    name = kind.name(ns)
    seen: list[tuple[int, str | None]] = []

    @kind.on(flow, name, max_attempts=2, **FAST)
    async def handle(payload: Any, msg: Message[Any]) -> None:
        seen.append((msg.attempt, msg.headers.get("x-stamp")))
        if msg.attempt == 1:
            raise RuntimeError("again")

    async with flow:
        msg_id = await kind.produce(flow, name, {"n": 1})
        await flow.wait_idle()
    assert seen == [(1, f"send:{kind.kind}:{name}"), (2, f"retry:{kind.kind}:{name}")]
    retry = [out for out in stamp.outgoing if out.reason == "retry"]
    assert len(retry) == 1
    assert (retry[0].id, retry[0].attempt, retry[0].payload) == (msg_id, 2, b'{"n":1}')


@by_kind(DURABLE)
async def test_a_replay_goes_through_the_produce_chain(kind: Kind, url: str, ns: str) -> None:
    stamp = Stamp()
    flow = Flow(url, prefix=ns, middleware=[stamp])
    name = kind.name(ns)
    seen: list[str | None] = []

    @kind.on(flow, name)
    async def handle(payload: dict[str, int], msg: Message[Any]) -> None:
        seen.append(msg.headers.get("x-stamp"))
        if len(seen) == 1:
            raise Reject("first time")

    async with flow:
        await kind.produce(flow, name, {"n": 1}, headers={"keep": "me"})
        await flow.wait_idle()
        assert await flow.dlq(name).replay() == 1
        await flow.wait_idle()
        assert await flow.dlq(name).count() == 0
    assert seen == [f"send:{kind.kind}:{name}", f"replay:{kind.kind}:{name}"]
    replay = [out for out in stamp.outgoing if out.reason == "replay"]
    assert len(replay) == 1
    assert replay[0].headers["keep"] == "me"  # the letter's own headers go back with it


async def test_a_middleware_may_change_the_payload_and_the_destination(url: str, ns: str) -> None:
    class Reroute(Middleware):
        async def produce(self, out: Outgoing, call_next: Any) -> Any:
            out.name = f"{out.name}:v2"
            out.payload = {**out.payload, "routed": True}
            return await call_next(out)

    flow = Flow(url, prefix=ns, middleware=[Reroute()])
    got: list[dict[str, Any]] = []

    @flow.on_queue(f"{ns}:q:v2")
    async def handle(payload: dict[str, Any]) -> None:
        got.append(payload)

    async with flow:
        await flow.enqueue(f"{ns}:q", {"n": 1})
        await flow.wait_idle()
        assert await flow.send("LLEN", f"{ns}:q") == 0
    assert got == [{"n": 1, "routed": True}]


async def test_the_handler_result_comes_back_through_the_chain(url: str, ns: str) -> None:
    results: list[Any] = []

    class Keep(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            result = await call_next(msg)
            results.append(result)
            return result

    flow = Flow(url, prefix=ns, middleware=[Keep()])

    @flow.on_queue(f"{ns}:q")
    async def double(payload: dict[str, int]) -> int:
        return payload["n"] * 2

    async with flow:
        await flow.enqueue(f"{ns}:q", {"n": 21})
        await flow.wait_idle()
    assert results == [42]


async def test_the_timeout_bounds_the_handler_inside_the_chain(url: str, ns: str) -> None:
    """A middleware sees the handler's TimeoutError (the timeout wraps the handler)."""
    seen: list[str] = []

    class Watch(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            try:
                return await call_next(msg)
            except TimeoutError:
                seen.append("timeout")
                raise

    flow = Flow(url, prefix=ns, middleware=[Watch()])

    @flow.on_queue(f"{ns}:q", timeout=0.05, max_attempts=1)
    async def slow(payload: Any) -> None:
        await anyio.sleep(5)

    async with flow:
        await flow.enqueue(f"{ns}:q", {"n": 1})
        await flow.wait_idle()
        letters = await flow.dlq(f"{ns}:q").list()
    assert seen == ["timeout"]
    assert letters[0].error == "handler timed out after 0.05s"


async def test_builtin_extras_run_inside_the_users_middleware(url: str, ns: str) -> None:
    """An idempotency duplicate is skipped inside the chain: the user's middleware sees
    the Skip, the handler runs once."""
    trail: list[str] = []

    class Outcome(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            try:
                result = await call_next(msg)
            except Exception as exc:
                trail.append(type(exc).__name__)
                raise
            trail.append("ok")
            return result

    flow = Flow(url, prefix=ns, middleware=[Outcome()], track=True)

    @flow.on_queue(f"{ns}:q", idempotency_key=lambda p: p["k"], concurrency=1)
    async def handle(payload: dict[str, str]) -> None:
        pass

    async with flow:
        first = await flow.enqueue(f"{ns}:q", {"k": "same"})
        await flow.enqueue(f"{ns}:q", {"k": "same"})
        await flow.wait_idle()
        status = await flow.status(first or "")
    assert trail == ["ok", "Skip"]
    assert status is not None and status.status == "completed"


async def test_mistakes_are_config_errors(url: str, ns: str) -> None:
    flow = Flow(url, prefix=ns)
    with pytest.raises(ConfigError, match="neither a consume nor a produce"):
        flow.add_middleware(object())
    with pytest.raises(ConfigError, match="not the class"):
        flow.add_middleware(Recorder)

    class Sync:
        def consume(self, msg: Any, call_next: Any) -> Any:
            return call_next(msg)

    with pytest.raises(ConfigError, match="consume must be an async method"):
        Flow(url, middleware=[Sync()])

    @flow.on_queue(f"{ns}:q")
    async def handle(payload: Any) -> None:
        pass

    async with flow:
        with pytest.raises(ConfigError, match="running flow"):
            flow.add_middleware(Middleware())


async def test_a_producer_only_flow_runs_its_produce_chain(url: str, ns: str) -> None:
    trail: list[str] = []
    flow = Flow(url, prefix=ns, middleware=[Recorder("p", trail)])
    try:
        assert await flow.enqueue_many(f"{ns}:q", [1, 2], headers={"h": "v"})
        assert await flow.append(f"{ns}:s", {"n": 1})
    finally:
        await flow.aclose()
    assert trail == ["p:produce:in", "p:produce:out"] * 2


async def test_the_readme_example_logs_ids_and_stamps_headers(
    url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The Middleware section of the README, run as written (on the test server)."""
    section = README.split("## Middleware", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "flow = Flow(middleware=[LogIds()])" in code
    scope: dict[str, Any] = {}
    exec(code.replace("Flow(middleware=", f"Flow({url!r}, prefix={ns!r}, middleware="), scope)
    flow: Flow = scope["flow"]
    got: list[dict[str, str]] = []

    @flow.on_stream(f"{ns}:s", group="g")
    async def handle(payload: Any, msg: Message[Any]) -> None:
        got.append(msg.headers)

    caplog.set_level("INFO", logger="app")
    async with flow:
        entry = await flow.append(f"{ns}:s", {"n": 1})
        await flow.wait_idle()
    assert got == [{"sent-by": "billing"}]
    assert f"sent {entry} to stream {ns}:s" in caplog.text
    assert f"handling {entry} (attempt 1)" in caplog.text
