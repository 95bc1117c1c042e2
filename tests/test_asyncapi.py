"""AsyncAPI documents of flows (``redisflow docs``): every example app's document is valid
against the official AsyncAPI 3.0 JSON Schema (vendored in tests/support/asyncapi/), its
references resolve, and it says what each source is in Redis."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from redisflow import Flow
from redisflow.asyncapi import document, dumps
from redisflow.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).parent / "support" / "asyncapi" / "3.0.0-without-$id.json"
EXAMPLES = sorted(
    p.stem for p in (ROOT / "examples").glob("*.py") if p.stem not in ("__init__", "demo")
)


@cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def check(doc: dict[str, Any]) -> None:
    """Valid against the official schema, every reference resolves, and JSON round-trips."""
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    for ref in refs(doc):
        resolve(doc, ref)
    assert json.loads(dumps(doc)) == doc


def test_the_vendored_schema_is_the_official_one() -> None:
    """A tampered or truncated copy would validate anything: it is the 3.0.0 schema."""
    schema = json.loads(SCHEMA.read_text())
    assert schema["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "$id" not in schema and len(schema["definitions"]) > 100
    assert not validator().is_valid({"asyncapi": "3.0.0"})  # no info: invalid


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_app_has_a_valid_document(name: str) -> None:
    module = importlib.import_module(f"examples.{name}")
    flow = module.flow
    doc = document(flow)
    check(doc)
    assert doc["info"]["title"] == f"examples.{name}"
    assert doc["info"]["description"]  # the module's docstring
    receives = [op for op in doc["operations"].values() if op["action"] == "receive"]
    assert len(receives) == len(flow.handlers)
    for handler in flow.handlers.values():  # each handler: a receive on its source's channel
        op = next(op for op in receives if op["x-redisflow"]["handler"] == handler.name)
        channel = resolve(doc, op["channel"]["$ref"])
        assert channel["address"] == handler.source.name
        assert channel["x-redisflow"]["kind"] == handler.source.kind
        for message in op["messages"]:
            assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
    sends = [op for op in doc["operations"].values() if op["action"] == "send"]
    assert len(sends) == len({(p.source.kind, p.source.name) for p in flow.produced})


def test_the_readme_app_documents_its_sources_and_payloads() -> None:
    from examples import app

    doc = document(app.flow, title="shop", version="1.2.0")
    check(doc)
    about = "The README's example service: one handler of each kind."
    assert doc["info"] == {"title": "shop", "version": "1.2.0", "description": about}
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert channels["shop:emails"]["x-redisflow"] == {
        "kind": "queue", "structure": "list", "partitions": 1,
        "deadLetters": "rf:{shop:emails}:dead", "delayed": "rf:{shop:emails}:delayed",
    }  # fmt: skip
    assert channels["shop:ledger"]["x-redisflow"]["groups"] == ["billing"]
    assert channels["shop.orders.*"]["x-redisflow"]["pattern"] is True
    assert "consumer groups (`billing`)" in channels["shop:ledger"]["description"]
    order = doc["components"]["schemas"]["Order"]
    assert order["required"] == ["id", "item"] and order["properties"]["quantity"]["default"] == 1
    # A handler's receive and a declared send of the same type share one message.
    ops = doc["operations"]
    assert ops["receive.send_confirmation"]["messages"] == [
        {"$ref": "#/channels/queue.shop_emails/messages/Order"}
    ]
    assert ops["send.queue.shop_emails"]["messages"] == ops["receive.send_confirmation"]["messages"]
    assert ops["send.channel.shop.orders.created"]["summary"] == "Every new order"
    assert ops["receive.send_confirmation"]["x-redisflow"]["options"]["concurrency"] == 32


class Shipped(BaseModel):
    kind: Literal["shipped"]
    carrier: str


class Cancelled(BaseModel):
    kind: Literal["cancelled"]
    reason: str = Field(description="why, in the customer's words", max_length=200)


Event = Annotated[Shipped | Cancelled, Field(discriminator="kind")]


def test_odd_payload_types_still_give_a_valid_document() -> None:
    """A discriminated union (pydantic's OpenAPI-style discriminator is not AsyncAPI's), a
    type pydantic cannot describe (an empty schema that says why, the rest intact), a
    partitioned stream, names with characters a reference cannot hold, no type at all."""
    flow = Flow(url="redis://ops:s3cret-pw@redis.internal:6380/2", prefix="x")

    @flow.on_stream("events/v1 {tenant}", group="mail", partitions=1)
    async def on_event(event: Event) -> None: ...

    @flow.on_stream("orders", group="audit", partitions=4)
    async def on_order(data: dict[str, list[int]]) -> None: ...

    @flow.on_queue("jobs")
    async def on_job(job: Callable[[], None]) -> None: ...

    @flow.on_channel("news")
    async def on_news(item) -> None:  # type: ignore[no-untyped-def]
        ...

    doc = document(flow)
    check(doc)
    text = dumps(doc)
    assert "s3cret-pw" not in text and "ops:" not in text
    assert doc["servers"]["redis"] == {
        "host": "redis.internal:6380", "protocol": "redis",
        "description": "One Redis server, database 2.",
    }  # fmt: skip
    channels = {c["address"]: c for c in doc["channels"].values()}
    (event,) = channels["events/v1 {tenant}"]["messages"].values()
    union = event["payload"]
    assert union["discriminator"] == "kind" and len(union["oneOf"]) == 2
    assert doc["components"]["schemas"]["Cancelled"]["properties"]["reason"]["maxLength"] == 200
    (job,) = channels["jobs"]["messages"].values()
    assert job["payload"]["description"].startswith("no JSON Schema for this type")
    (news,) = channels["news"]["messages"].values()
    assert news["payload"] == {} and news["name"] == "Any"
    orders = channels["orders"]["x-redisflow"]
    assert orders["partitions"] == 4 and len(orders["partitionKeys"]) == 4
    assert "4 partitions" in channels["orders"]["description"]


class Thumb(BaseModel):
    url: str
    width: int


def test_a_handler_that_returns_something_documents_its_reply() -> None:
    """A handler annotated with what it returns gets a ``reply``: a channel of its own (no
    fixed address: one per result id) whose message is the return type's schema; a handler
    that returns None, a batch handler and an unannotated one get none."""
    flow = Flow(url="redis://127.0.0.1:6379", prefix="x")

    @flow.on_queue("resize")
    async def resize(url: str) -> Thumb:
        return Thumb(url=url, width=64)

    @flow.on_channel("sizes")
    async def sizes(url: str) -> list[int]:
        return [64]

    @flow.on_stream("audit", group="g")
    async def audit(n: int) -> None: ...

    @flow.on_queue("rows", batch=10)
    async def rows(items: list[int]) -> int:
        return len(items)

    @flow.on_priority("bare")
    async def bare(n: int):  # type: ignore[no-untyped-def]
        return n

    doc = document(flow)
    check(doc)
    ops = {
        op["x-redisflow"]["handler"].rpartition(".")[2]: op
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    reply = ops["resize"]["reply"]
    channel = resolve(doc, reply["channel"]["$ref"])
    assert channel["address"] is None and channel["x-redisflow"]["push"] == "x:reply:{<id>}"
    (message,) = (resolve(doc, m["$ref"]) for m in reply["messages"])
    assert message["payload"] == {"$ref": "#/components/schemas/Thumb"}
    assert doc["components"]["schemas"]["Thumb"]["required"] == ["url", "width"]
    assert reply["address"]["location"] == "$message.header#/rf-result-id"
    listed = resolve(doc, ops["sizes"]["reply"]["messages"][0]["$ref"])
    assert listed["payload"] == {"type": "array", "items": {"type": "integer"}}
    for name in ("audit", "rows", "bare"):
        assert "reply" not in ops[name], name
    assert len([c for c in doc["channels"].values() if c["address"] is None]) == 2


def test_produces_is_checked_when_declared() -> None:
    flow = Flow()
    with pytest.raises(ConfigError, match=r"flow.produces\('x'\): kind must be one of"):
        flow.produces("x", int, kind="list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"flow.produces\(''\)"):
        flow.produces("", int)
    with pytest.raises(ConfigError, match=r"flow.produces\('x'\): payload type"):
        flow.produces("x", 42)
    with pytest.raises(ConfigError, match="summary must be a string"):
        flow.produces("x", int, summary=3)  # type: ignore[arg-type]
    flow.produces("x", int)
    flow.produces("x", int)  # the same again: once
    flow.produces("x", str)  # another type to the same source: a second message
    assert len(flow.produced) == 2
    doc = document(flow)
    check(doc)
    (op,) = doc["operations"].values()
    assert op["action"] == "send" and len(op["messages"]) == 2


def test_docs_command_prints_json_and_yaml(tmp_path: Path) -> None:
    def docs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "redisflow", "docs", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    printed = docs("examples.app:flow")
    assert printed.returncode == 0, printed.stderr
    doc = json.loads(printed.stdout)
    check(doc)
    as_yaml = docs("examples.app:flow", "--format", "yaml", "--title", "Shop")
    assert yaml.safe_load(as_yaml.stdout) == {**doc, "info": {**doc["info"], "title": "Shop"}}
    out = tmp_path / "shop.yaml"  # the format follows the file's name
    written = docs("examples.app:flow", "--out", str(out))
    assert written.returncode == 0 and not written.stdout
    assert yaml.safe_load(out.read_text()) == doc
    bad = docs("examples.app:nope")
    assert bad.returncode == 2 and "has no attribute 'nope'" in bad.stderr
    bad = docs("examples.app:flow", "--format", "xml")
    assert bad.returncode == 2 and "expected one of json, yaml" in bad.stderr
