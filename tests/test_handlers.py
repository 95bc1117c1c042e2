"""Handler registration (decorators, ConfigError) and payload types, end to end via a queue."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from typing_extensions import TypedDict

from redisflow import ConfigError, Flow, Message
from redisflow.message import Source
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio


class Email(BaseModel):
    to: str
    n: int


@dataclass
class EmailDC:
    to: str
    n: int


class EmailTD(TypedDict):
    to: str
    n: int


# -- registration ---------------------------------------------------------------------------


def test_decorators_return_function_unchanged_and_register(ns: str) -> None:
    """Every on_* decorator returns the very function and records it in flow.handlers."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def on_ch(data: Email) -> None: ...

    async def on_q(data: Email) -> None: ...

    async def on_p(data: Email) -> None: ...

    async def on_s(data: Email) -> None: ...

    assert flow.on_channel(f"{ns}.orders.*")(on_ch) is on_ch
    assert flow.on_queue(f"{ns}:q", concurrency=3, max_attempts=7)(on_q) is on_q
    assert flow.on_priority(f"{ns}:p")(on_p) is on_p
    assert flow.on_stream(f"{ns}:s", group="g1")(on_s) is on_s

    assert set(flow.handlers) == {
        ("channel", f"{ns}.orders.*", None),
        ("queue", f"{ns}:q", None),
        ("priority", f"{ns}:p", None),
        ("stream", f"{ns}:s", "g1"),
    }
    q = flow.handlers[("queue", f"{ns}:q", None)]
    assert q.fn is on_q
    assert q.source == Source("queue", f"{ns}:q", None)
    assert q.options.concurrency == 3
    assert q.options.max_attempts == 7
    assert flow.handlers[("stream", f"{ns}:s", "g1")].fn is on_s
    assert flow.handlers[("stream", f"{ns}:s", "g1")].source.group == "g1"


def test_same_stream_different_groups_is_allowed(ns: str) -> None:
    """Two handlers of one stream in different groups are distinct registrations."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    @flow.on_stream(f"{ns}:s", group="a")
    async def first(data: Email) -> None: ...

    @flow.on_stream(f"{ns}:s", group="b")
    async def second(data: Email) -> None: ...

    assert flow.handlers[("stream", f"{ns}:s", "a")].fn is first
    assert flow.handlers[("stream", f"{ns}:s", "b")].fn is second


def _raises_naming(fn: Callable[..., Any]) -> Any:
    return pytest.raises(ConfigError, match=re.escape(fn.__qualname__))


def test_config_error_is_a_value_error() -> None:
    """ConfigError can be caught as ValueError."""
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("kind", ["channel", "queue", "priority", "stream"])
def test_duplicate_handler_is_rejected(ns: str, kind: str) -> None:
    """A second handler for the same kind/name(/group) raises ConfigError naming it."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)
    name = f"{ns}.x" if kind == "channel" else f"{ns}:x"
    group = "g" if kind == "stream" else None

    async def original(data: Email) -> None: ...

    async def duplicate(data: Email) -> None: ...

    flow.add_handler(kind, name, original, group=group)  # type: ignore[arg-type]
    with _raises_naming(duplicate):
        flow.add_handler(kind, name, duplicate, group=group)  # type: ignore[arg-type]
    assert flow.handlers[(kind, name, group)].fn is original  # type: ignore[index]


def test_duplicate_via_decorator_is_rejected(ns: str) -> None:
    """The decorators reject a duplicate queue handler with a ValueError naming it."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    @flow.on_queue(f"{ns}:q")
    async def first(data: Email) -> None: ...

    async def second_handler(data: Email) -> None: ...

    with pytest.raises(ValueError, match=re.escape(second_handler.__qualname__)):
        flow.on_queue(f"{ns}:q")(second_handler)


@pytest.mark.parametrize(
    "options",
    [{"concurrency": 0}, {"concurrency": -1}, {"max_attempts": 0}, {"max_attempts": -3}],
)
def test_bad_options_are_rejected(ns: str, options: dict[str, int]) -> None:
    """concurrency < 1 and max_attempts < 1 raise ConfigError naming the function."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def badly_configured(data: Email) -> None: ...

    with _raises_naming(badly_configured):
        flow.on_queue(f"{ns}:q", **options)(badly_configured)
    with _raises_naming(badly_configured):
        flow.on_priority(f"{ns}:p", **options)(badly_configured)
    with _raises_naming(badly_configured):
        flow.on_stream(f"{ns}:s", group="g", **options)(badly_configured)
    with _raises_naming(badly_configured):
        flow.on_channel(f"{ns}.c", **options)(badly_configured)
    assert flow.handlers == {}


def test_var_args_handlers_are_rejected(ns: str) -> None:
    """A handler taking *args or **kwargs raises ConfigError naming it."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def with_args(*args: Any) -> None: ...

    async def with_kwargs(data: Email, **kwargs: Any) -> None: ...

    with _raises_naming(with_args):
        flow.on_queue(f"{ns}:q1")(with_args)
    with _raises_naming(with_kwargs):
        flow.on_queue(f"{ns}:q2")(with_kwargs)
    assert flow.handlers == {}


class Client:
    """A resource type no test provides."""


class Pool:
    """A resource type: a shared pool."""

    def __init__(self) -> None:
        self.used = 0


class Settings(dict[str, str]):
    """A resource type: shared settings."""


def test_extra_required_parameter_is_rejected(ns: str) -> None:
    """A required parameter that is neither the payload, a Message, nor annotated (a
    resource) raises ConfigError."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def too_many(data: Email, other) -> None: ...  # type: ignore[no-untyped-def]

    async def too_many_with_msg(msg: Message[Email], data: Email, extra=...) -> None: ...  # type: ignore[no-untyped-def]

    with _raises_naming(too_many):
        flow.on_queue(f"{ns}:q1")(too_many)
    flow.on_queue(f"{ns}:q2")(too_many_with_msg)  # a default makes it optional
    assert list(flow.handlers) == [("queue", f"{ns}:q2", None)]


async def test_resource_parameter_without_a_resource_fails_start(url: str, ns: str) -> None:
    """A handler asking for a type no resource provides: start raises ConfigError naming
    the handler and the parameter."""
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:q")
    async def needs(data: Email, client: Client) -> None: ...

    with pytest.raises(ConfigError, match=r"needs.*client"):
        async with flow:
            pass


async def test_hooks_and_resources_wrap_the_consumers(url: str, ns: str) -> None:
    """Start-up hooks run first, resources open before handlers run and are injected by
    type (async and sync handlers), and close after the consumers stopped, before the
    shutdown hooks."""
    flow = make_flow(url, ns)
    events: list[str] = []

    @flow.on_startup
    async def boot() -> None:
        events.append("startup")

    @flow.resource
    async def pool() -> AsyncIterator[Pool]:
        events.append("pool open")
        yield Pool()
        events.append("pool closed")

    @flow.resource
    async def settings() -> Settings:
        return Settings(region="eu")

    @flow.on_shutdown
    def bye() -> None:
        events.append("shutdown")

    @flow.on_queue(f"{ns}:q")
    async def use(n: int, msg: Message[int], pool: Pool, settings: Settings) -> None:
        pool.used += n
        events.append(f"handled {n} in {settings['region']}")

    @flow.on_queue(f"{ns}:sync")
    def use_sync(n: int, pool: Pool) -> None:
        pool.used += n
        events.append(f"sync {n}")

    async with flow:
        await flow.enqueue(f"{ns}:q", 2)
        await flow.enqueue(f"{ns}:sync", 3)
        await eventually(lambda: len(events) == 4)
    assert events[:2] == ["startup", "pool open"]
    assert sorted(events[2:4]) == ["handled 2 in eu", "sync 3"]
    assert events[4:] == ["pool closed", "shutdown"]


def test_bad_resources_are_rejected(ns: str) -> None:
    """A resource needs an annotated return type (AsyncIterator[T] for a generator), and
    one resource per type."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def untyped():  # type: ignore[no-untyped-def]
        return 1

    async def gen() -> int:  # type: ignore[misc]
        yield 1

    async def one() -> int:
        return 1

    with pytest.raises(ConfigError, match="annotate"):
        flow.resource(untyped)
    with pytest.raises(ConfigError, match="AsyncIterator"):
        flow.resource(gen)
    flow.resource(one)
    with pytest.raises(ConfigError, match="already"):
        flow.resource(one)


def test_stream_handler_without_group_is_rejected(ns: str) -> None:
    """add_handler('stream', ...) without a group raises ConfigError naming the function."""
    flow = Flow("redis://127.0.0.1:1/0", prefix=ns)

    async def groupless(data: Email) -> None: ...

    with _raises_naming(groupless):
        flow.add_handler("stream", f"{ns}:s", groupless)
    with _raises_naming(groupless):
        flow.add_handler("stream", f"{ns}:s", groupless, group="")
    assert flow.handlers == {}


@pytest.mark.parametrize("priority", [-1, 8192, 1.5])
async def test_bad_priority_is_rejected(url: str, ns: str, priority: Any) -> None:
    """enqueue_priority with a priority outside 0..8191 or not an int raises ConfigError."""
    q = f"{ns}:p"
    async with make_flow(url, ns) as flow:
        with pytest.raises(ConfigError):
            await flow.enqueue_priority(q, {"to": "a", "n": 1}, priority=priority)
        with pytest.raises(ConfigError):
            await flow.enqueue_priority_many(q, [{"to": "a", "n": 1}], priority=priority)
        assert await flow.redis.exists(q) == 0
        await flow.enqueue_priority(q, {"to": "a", "n": 1}, priority=8191)  # the maximum
        assert await flow.redis.zcard(q) == 1


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "a b", ""])
def test_bad_prefix_is_rejected(prefix: str) -> None:
    """Flow(prefix=...) with braces, spaces or nothing raises ConfigError."""
    with pytest.raises(ConfigError):
        Flow("redis://127.0.0.1:1/0", prefix=prefix)


# -- payload types, end to end ---------------------------------------------------------------


async def run_queue(
    url: str,
    ns: str,
    handler: Callable[..., Any],
    items: list[Any],
    got: list[Any],
    *,
    raw_items: Sequence[bytes] = (),
) -> Flow:
    """Register ``handler`` on a fresh queue, enqueue ``items``, run until ``got`` has all."""
    flow = make_flow(url, ns)
    q = f"{ns}:q"
    flow.on_queue(q, concurrency=1)(handler)
    async with flow:
        for item in items:
            await flow.enqueue(q, item)
        if raw_items:
            await flow.redis.rpush(q, *raw_items)
        await eventually(lambda: len(got) >= len(items) + len(raw_items))
    assert await flow_dead_count(url, flow, q) == 0
    return flow


async def flow_dead_count(url: str, flow: Flow, q: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.xlen(flow.keys(q).dead))
    finally:
        await client.aclose()


async def test_pydantic_model_payload(url: str, ns: str) -> None:
    """A pydantic-model payload is validated; producers accept model, dataclass and dict."""
    got: list[Any] = []

    async def handle(data: Email) -> None:
        got.append(data)

    await run_queue(
        url,
        ns,
        handle,
        [Email(to="a", n=1), EmailDC(to="b", n=2), {"to": "c", "n": 3}],
        got,
        raw_items=[b'{"to": "d", "n": "4"}'],
    )
    assert got == [Email(to="a", n=1), Email(to="b", n=2), Email(to="c", n=3), Email(to="d", n=4)]
    assert all(type(x) is Email for x in got)


async def test_dataclass_payload(url: str, ns: str) -> None:
    """A dataclass payload is built from the JSON, whichever form the producer sent."""
    got: list[Any] = []

    async def handle(data: EmailDC) -> None:
        got.append(data)

    await run_queue(
        url, ns, handle, [EmailDC(to="a", n=1), Email(to="b", n=2), {"to": "c", "n": 3}], got
    )
    assert got == [EmailDC("a", 1), EmailDC("b", 2), EmailDC("c", 3)]
    assert all(type(x) is EmailDC for x in got)


async def test_typeddict_payload(url: str, ns: str) -> None:
    """A TypedDict payload arrives as a validated dict."""
    got: list[Any] = []

    async def handle(data: EmailTD) -> None:
        got.append(data)

    await run_queue(
        url,
        ns,
        handle,
        [{"to": "a", "n": 1}, Email(to="b", n=2)],
        got,
        raw_items=[b'{"to": "c", "n": "3"}'],
    )
    assert got == [{"to": "a", "n": 1}, {"to": "b", "n": 2}, {"to": "c", "n": 3}]


async def test_builtin_int_payload(url: str, ns: str) -> None:
    """An int-annotated payload gets an int."""
    got: list[Any] = []

    async def handle(value: int) -> None:
        got.append(value)

    await run_queue(url, ns, handle, [1, 42, -7], got)
    assert got == [1, 42, -7]
    assert all(type(x) is int for x in got)


async def test_list_of_int_payload(url: str, ns: str) -> None:
    """A list[int] payload gets a list of ints."""
    got: list[Any] = []

    async def handle(values: list[int]) -> None:
        got.append(values)

    await run_queue(url, ns, handle, [[1, 2, 3], []], got, raw_items=[b'["4", 5]'])
    assert got == [[1, 2, 3], [], [4, 5]]


async def test_unannotated_payload_is_decoded_json(url: str, ns: str) -> None:
    """An unannotated payload parameter gets the decoded JSON (a dict for an object)."""
    got: list[Any] = []

    async def handle(data):  # type: ignore[no-untyped-def]
        got.append(data)

    await run_queue(url, ns, handle, [{"to": "a", "n": 1}, Email(to="b", n=2)], got)
    assert got == [{"to": "a", "n": 1}, {"to": "b", "n": 2}]
    assert all(type(x) is dict for x in got)


async def test_message_only_handler_gets_typed_payload(url: str, ns: str) -> None:
    """A handler with only ``msg: Message[Model]`` gets msg.payload as a validated Model."""
    got: list[Message[Email]] = []

    async def handle(msg: Message[Email]) -> None:
        got.append(msg)

    await run_queue(url, ns, handle, [{"to": "a", "n": 1}], got)
    (msg,) = got
    assert type(msg.payload) is Email
    assert msg.payload == Email(to="a", n=1)
    assert msg.source == Source("queue", f"{ns}:q", None)
    assert msg.attempt == 1
    assert msg.enqueued_at is not None


async def test_message_then_payload_order(url: str, ns: str) -> None:
    """``(msg: Message, payload: Model)`` is called with the Message first, the Model second."""
    got: list[tuple[Any, Any]] = []

    async def handle(msg: Message, data: Email) -> None:  # type: ignore[type-arg]
        got.append((msg, data))

    flow = await run_queue(url, ns, handle, [{"to": "a", "n": 1}], got)
    ((msg, data),) = got
    assert isinstance(msg, Message)
    assert data == Email(to="a", n=1)
    assert msg.payload == data
    assert flow.handlers[("queue", f"{ns}:q", None)].wants_message


async def test_payload_then_message_order_and_sync_handler(url: str, ns: str) -> None:
    """A plain ``def (data, msg)`` handler runs (in a thread) with payload then Message."""
    got: list[tuple[Any, Any]] = []

    def handle(data: Email, msg: Message[Email]) -> None:
        got.append((data, msg))

    await run_queue(url, ns, handle, [{"to": "a", "n": 1}], got)
    ((data, msg),) = got
    assert data == Email(to="a", n=1)
    assert isinstance(msg, Message)
    assert msg.payload == data


async def test_message_raw_is_payload_bytes(url: str, ns: str) -> None:
    """Message.raw holds exactly the payload bytes, without redisflow's envelope."""
    got: list[Message[Any]] = []

    async def handle(msg: Message[Email]) -> None:
        got.append(msg)

    foreign = b'{"to": "x", "n": 9}'
    await run_queue(
        url, ns, handle, [{"to": "a", "n": 1}, Email(to="b", n=2)], got, raw_items=[foreign]
    )
    assert [m.raw for m in got] == [
        orjson.dumps({"to": "a", "n": 1}),
        orjson.dumps({"to": "b", "n": 2}),
        foreign,
    ]
    assert got[0].id != got[1].id
    assert got[2].enqueued_at is None  # written by another client: no envelope


async def test_invalid_payload_is_dead_lettered_without_calling_handler(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A payload that does not validate against the type hint goes to the dead letters."""
    got: list[Any] = []
    flow = make_flow(url, ns)
    q = f"{ns}:q"

    @flow.on_queue(q)
    async def handle(data: Email) -> None:
        got.append(data)

    async with flow:
        await flow.enqueue(q, {"to": "a"})  # n missing
        await r.rpush(q, b"not json")
        await flow.enqueue(q, {"to": "ok", "n": 1})
        await eventually(lambda: got)
        await eventually(lambda: _xlen_is(r, flow.keys(q).dead, 2))
        dead = await flow.dlq(q).list()
    assert got == [Email(to="ok", n=1)]
    assert sorted(d.data.decode("utf-8", "replace") for d in dead) == sorted(
        ['{"to":"a"}', "not json"]
    )
    assert all(d.handler == handle.__qualname__ for d in dead)


async def _xlen_is(r: aioredis.Redis, key: str, n: int) -> bool:
    return int(await r.xlen(key)) == n


# -- lifecycle -----------------------------------------------------------------------------


async def test_error_in_the_body_of_async_with_propagates_as_itself(url: str, ns: str) -> None:
    """A user error inside ``async with flow`` is raised unchanged (not an ExceptionGroup),
    and the flow is stopped and closed."""
    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:q")
    async def handle(n: int) -> None:
        pass

    with pytest.raises(KeyError, match="boom"):
        async with flow:
            raise KeyError("boom")
    assert flow._runtime is None and not flow.client.open


async def test_producer_only_flow_is_closed_by_aclose(url: str, ns: str) -> None:
    """A flow used only to produce (never started) closes its pool with ``aclose``; it can
    produce again afterwards, and ``aclose`` is idempotent."""
    flow = make_flow(url, ns)
    assert await flow.enqueue(f"{ns}:q", 1)
    await flow.aclose()
    assert not flow.client.open
    assert await flow.enqueue(f"{ns}:q", 2)
    await flow.aclose()
    await flow.aclose()
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.llen(f"{ns}:q") == 2
    finally:
        await client.aclose()
