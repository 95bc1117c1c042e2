"""What a newcomer met in the first hour (issue 23), in the library: handlers that could
never run, input slips that raised the wrong error, a Pub/Sub message that did not say its
channel, validation errors that filled the log. Real Redis, private servers."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, Message
from redisflow.cli import main
from redisflow.ops.stats import collect
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio


class Email(BaseModel):
    to: str
    subject: str
    n: int


def test_a_generator_handler_is_refused_at_decoration() -> None:
    """An ``async def`` with ``yield`` is an async generator: calling it runs nothing, so it
    would count every message as processed without handling one."""
    flow = Flow("redis://localhost")

    async def agen(n: int) -> AsyncIterator[int]:
        yield n

    def gen(n: int) -> Iterator[int]:
        yield n

    for fn in (agen, gen):
        with pytest.raises(ConfigError, match=rf"{fn.__name__}.*generator"):
            flow.on_queue("q")(fn)


def test_input_slips_are_config_errors() -> None:
    """A non-ASCII digit as a port, ``partitions=True``, a lone surrogate in a name or a key:
    a ConfigError (a ValueError) saying what is wrong, not a bare ValueError, a silent True
    taken for 1, or a UnicodeEncodeError from deep inside."""
    with pytest.raises(ConfigError, match="bad port"):
        Flow("redis://h:\u00b2/0")
    with pytest.raises(ConfigError, match="database must be a number"):
        Flow("redis://h:1/\u00b2")
    flow = Flow("redis://localhost")
    with pytest.raises(ConfigError, match="partitions must be an int"):
        flow.on_queue("q", partitions=True)(lambda n: None)
    with pytest.raises(ConfigError, match="lone surrogate"):
        flow.on_queue("q\ud800")(lambda n: None)
    with pytest.raises(ConfigError, match="lone surrogate"):
        flow.keys("q").dedup("k\udcff")


async def test_a_lone_surrogate_in_a_producer_call_is_a_clear_error(url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    try:
        with pytest.raises(ConfigError, match="lone surrogate"):
            await flow.enqueue(f"{ns}:q\ud800", 1)
        with pytest.raises(ConfigError, match="lone surrogate"):
            await flow.enqueue(f"{ns}:q", 1, dedup_key="\ud800")
        with pytest.raises(TypeError, match="not valid text"):
            await flow.client.send("SET", f"{ns}:k\ud800", 1)
        assert await flow.client.send("PING") == b"PONG", "the connection is still usable"
    finally:
        await flow.aclose()


def test_a_bad_port_on_the_command_line_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """Not argparse's ``invalid _url value``: the parser's own message."""
    with pytest.raises(SystemExit) as exit_info:
        main(["enqueue", "q", "1", "--url", "redis://h:\u00b2/0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bad port" in err and "invalid _url value" not in err, err


async def test_a_pattern_handler_is_told_the_channel(url: str, ns: str) -> None:
    """``msg.channel`` is the channel a message was published to (``source.name`` is the
    pattern)."""
    flow = make_flow(url, ns)
    got: list[tuple[str, str | None]] = []

    @flow.on_channel(f"{ns}.orders.*")
    async def on_order(n: int, msg: Message[int]) -> None:
        got.append((msg.source.name, msg.channel))

    async with flow:
        await flow.publish(f"{ns}.orders.created", 1)
        await eventually(lambda: got, what="delivered")
    assert got == [(f"{ns}.orders.*", f"{ns}.orders.created")]


async def test_an_invalid_payload_logs_one_line_and_keeps_the_detail_in_the_dead_letter(
    url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three validation errors: the log line names the first and the count, on one line;
    the dead letter has pydantic's whole message."""
    flow = make_flow(url, ns)
    q = f"{ns}:emails"

    @flow.on_queue(q)
    async def send(email: Email) -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="redisflow"):
        async with flow:
            await flow.enqueue_many(q, [{"n": "x"}, {"n": "y"}])
            await eventually(lambda: _dead(flow, q, 2), what="dead-lettered")
    lines = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 2, lines
    for line in lines:
        assert "\n" not in line and "to: Field required (and 2 more)" in line, line
    letters = await flow.dlq(q).list()
    await flow.aclose()
    assert all("3 validation errors" in d.error and "subject" in d.error for d in letters)


async def _dead(flow: Flow, name: str, n: int) -> bool:
    return await flow.dlq(name).count() >= n


# -- one Flow, several event loops -----------------------------------------------------------


def test_a_flow_used_by_one_asyncio_run_after_another(url: str, ns: str) -> None:
    """A module-level Flow used from two ``asyncio.run`` calls (a script, a CLI tool, a
    Django command): the second call connects again instead of waiting forever on the
    first loop's sockets (its connections are closed when its loop ends)."""
    flow = Flow(url, prefix=ns)
    q = f"{ns}:q"
    ids = [asyncio.run(asyncio.wait_for(flow.enqueue(q, n), 10)) for n in range(3)]
    assert all(ids) and len(set(ids)) == 3
    with redis.Redis.from_url(url) as r:
        assert r.llen(q) == 3
        names = [c.get("name", "") for c in r.client_list()]
    assert not [n for n in names if n.startswith("redisflow:send")], "left open by ended loops"


def test_a_loop_that_ended_without_closing_its_connections(url: str, ns: str) -> None:
    """A loop closed without ``asyncio.run``'s shutdown (no chance to close anything): the
    next loop abandons the dead connections and connects again."""
    flow = Flow(url, prefix=ns)
    q = f"{ns}:q"
    loop = asyncio.new_event_loop()
    with warnings.catch_warnings():  # the dead loop's transport, freed by the collector
        warnings.simplefilter("ignore", ResourceWarning)
        loop.run_until_complete(flow.enqueue(q, 1))
        loop.close()
        assert asyncio.run(asyncio.wait_for(flow.enqueue(q, 2), 10))
        asyncio.run(flow.aclose())
        gc.collect()
    with redis.Redis.from_url(url) as r:
        assert r.llen(q) == 2


def test_one_name_as_two_kinds_of_key_is_refused_at_decoration() -> None:
    """A queue and a priority queue (or a stream) of the same name would be one Redis key
    of two types: the producer of one would get WRONGTYPE. A channel is no key: allowed."""
    flow = Flow("redis://localhost")
    flow.on_queue("jobs")(lambda n: None)
    flow.on_channel("jobs")(lambda n: None)

    def second(n: int) -> None:
        pass

    for decorate in (flow.on_priority("jobs"), flow.on_stream("jobs", group="g")):
        with pytest.raises(ConfigError, match=r"second.*'jobs' is already a queue"):
            decorate(second)
    assert len(flow.handlers) == 2 and not flow.client.layouts.declared


class Order(BaseModel):
    order_id: int


async def test_two_apps_handling_one_queue_differently_are_told(
    url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two flows on one prefix with handlers for the same queue but other functions and
    payload types would split its messages silently (half dead-lettered as invalid by the
    other): the second warns at start, naming both, and ``stats`` says so while both run."""
    q = f"{ns}:jobs"
    mailer, billing = make_flow(url, ns), make_flow(url, ns)

    @mailer.on_queue(q)
    async def send(email: Email) -> None:
        pass

    @billing.on_queue(q)
    async def bill(order: Order) -> None:
        pass

    async with mailer:
        with caplog.at_level(logging.WARNING, logger="redisflow"):
            async with billing:
                snapshot = await collect(billing.client)
            warned = [
                r.getMessage() for r in caplog.records if "another live worker" in r.getMessage()
            ]
        after = await collect(mailer.client)
    assert len(warned) == 1, warned
    assert "send(tests.test_first_hour.Email)" in warned[0], warned[0]
    assert "bill(tests.test_first_hour.Order)" in warned[0], warned[0]
    assert len(snapshot.warnings) == 1 and "2 different live handlers" in snapshot.warnings[0]
    assert after.warnings == [], "the stopped one left the record"
    await mailer.aclose()
