"""The AsyncAPI 3.0 document of a flow: what ``redisflow docs`` prints and the dashboard's
Docs page shows.

One channel per source (its address is the Redis key or Pub/Sub channel; the description
and the ``x-redisflow`` extension tell its Redis structure, groups, partitions and the keys
of its retries and dead letters), a ``receive`` operation per handler, a ``send`` operation
per ``Flow.produces`` declaration. A handler annotated with what it returns gets a
``reply`` in its operation: the result it writes for a caller (``request``, ``result``),
on a channel of its own whose address is per message (``<prefix>:reply:{<id>}``). A
message's payload is the JSON Schema pydantic gives for the type (the handler's payload
parameter: validation mode; a declared send and a result: serialization mode), its named
types under ``components.schemas``. A type pydantic cannot describe gets
an empty schema that says why, never a broken document.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import TypeAdapter

from .config import KIND_OPTIONS, HandlerOptions, RateLimit
from .connection import parse_url
from .features import partitions as partitioning
from .keys import Keys
from .message import Kind, Source

if TYPE_CHECKING:
    from pydantic.json_schema import JsonSchemaMode

    from .app import Flow
    from .handler import Handler, Produced

VERSION = "3.0.0"
STRUCTURES: dict[str, str] = {
    "queue": "list",
    "priority": "sorted set",
    "stream": "stream",
    "channel": "Pub/Sub channel",
}
_ID = re.compile(r"[^\w.\-]+")
_REF = "#/components/schemas/{model}"


def document(
    flow: Flow,
    *,
    title: str | None = None,
    version: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``flow`` (a JSON-ready dict). By default the title is
    the name of the module of its handlers, the version its ``__version__`` (else 0.0.0),
    the description the first paragraph of its docstring."""
    module = _module(flow)
    if title is None:
        title = module.__name__ if module is not None else "redisflow app"
    if version is None:
        found = getattr(module, "__version__", None)
        version = found if isinstance(found, str) else "0.0.0"
    if description is None:
        text = inspect.cleandoc(module.__doc__ or "") if module is not None else ""
        description = text.split("\n\n")[0].strip()
    book = _Book(flow.config.prefix)
    for handler in flow.handlers.values():
        book.receive(handler)
    for produced in flow.produced:
        book.send(produced)
    schemas = book.schemas()  # fills in the messages' payloads
    channels = {cid: channel.to_json(cid) for cid, channel in book.channels.items()}
    channels |= {cid: _reply_json(*reply) for cid, reply in book.replies.items()}
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    return {
        "asyncapi": VERSION,
        "info": info,
        "servers": {"redis": server(flow.config.url)},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": book.operations,
        "components": {"schemas": schemas},
    }


def _module(flow: Flow) -> ModuleType | None:
    """The module that defines the flow's handlers (the first, by name)."""
    names = sorted({getattr(h.fn, "__module__", None) or "" for h in flow.handlers.values()})
    return next((sys.modules[n] for n in names if n in sys.modules), None)


def server(url: str) -> dict[str, Any]:
    """The Server Object of a Redis URL: host(s), protocol and database, never a secret."""
    spec = parse_url(url)
    hosts = ",".join("localhost" if a.path else f"{a.host}:{a.port}" for a in spec.addresses)
    what = {
        "single": "One Redis server",
        "cluster": "A Redis Cluster (seed nodes)",
        "sentinel": f"The primary of Sentinel service {spec.service!r} (the sentinels)",
    }[spec.mode]
    found: dict[str, Any] = {
        "host": hosts,
        "protocol": "rediss" if spec.tls else "redis",
        "description": f"{what}, database {spec.db}.",
    }
    socket = next((a.path for a in spec.addresses if a.path), None)
    if socket:
        found["pathname"] = socket
    return found


def dumps(doc: dict[str, Any], fmt: Literal["json", "yaml"] = "json") -> str:
    """The document as JSON (indented) or YAML (needs PyYAML: ``redisflow[docs]``)."""
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise ImportError(
                "YAML output needs PyYAML: pip install pyyaml (the docs extra)"
            ) from None
        text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
        return text
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


def identifier(text: str, taken: Iterable[str] = ()) -> str:
    """``text`` as an id an AsyncAPI reference can point at (letters, digits, ``._-``),
    made unique among ``taken``."""
    base = _ID.sub("_", text) or "x"
    found, n, used = base, 1, set(taken)
    while found in used:
        n += 1
        found = f"{base}-{n}"
    return found


def options_json(kind: Kind, options: HandlerOptions) -> dict[str, Any]:
    """The options that apply to a handler of ``kind``, JSON-ready (a function by name)."""
    allowed = set(KIND_OPTIONS[kind].__annotations__) if kind in KIND_OPTIONS else set()
    if not allowed:  # a kind without its own list: every option
        allowed = {f.name for f in fields(options)}
    return {f.name: _plain(getattr(options, f.name)) for f in fields(options) if f.name in allowed}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, RateLimit):
        rate = {"limit": value.limit, "per": value.per, "burst": value.burst}
        return rate | ({"key": _plain(value.key)} if value.key is not None else {})
    return getattr(value, "__qualname__", None) or repr(value)


def type_name(payload: Any) -> str:
    """A short name for a payload type (``Order``, ``list[int]``, ``Any``)."""
    if payload is Any:
        return "Any"
    if isinstance(payload, type) and not getattr(payload, "__args__", None):
        return payload.__name__
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(payload)).replace("typing.", "")


@dataclass
class _Message:
    name: str
    payload: Any
    adapter: TypeAdapter[Any]
    mode: JsonSchemaMode
    schema: dict[str, Any] | None = None  # filled by _Book.schemas


@dataclass
class _Channel:
    source: Source  # the group is None: a channel stands for every group
    partitions: int
    prefix: str
    groups: list[str] = field(default_factory=list)
    pattern: bool = False
    messages: dict[str, _Message] = field(default_factory=dict)

    def to_json(self, cid: str) -> dict[str, Any]:
        name, kind = self.source.name, self.source.kind
        keys = Keys(self.prefix, name)
        ext: dict[str, Any] = {"kind": kind, "structure": STRUCTURES.get(kind, kind)}
        if kind != "channel":
            ext |= {"partitions": self.partitions, "deadLetters": keys.dead}
            if self.partitions > 1:
                ext["partitionKeys"] = partitioning.keys(name, self.partitions)
            if kind in ("queue", "priority"):
                ext["delayed"] = keys.delayed
        if self.groups:
            ext["groups"] = self.groups
        if kind == "channel":
            ext["pattern"] = self.pattern
        return {
            "address": name,
            "title": f"{kind} {name}",
            "description": self.description(keys),
            "messages": {mid: _message_json(m) for mid, m in self.messages.items()},
            "x-redisflow": ext,
        }

    def description(self, keys: Keys) -> str:
        name, kind = self.source.name, self.source.kind
        spread = ""
        if self.partitions > 1:
            spread = f" Spread over {self.partitions} partitions (keys `{name}{{i/P:k}}`)."
        dead = f" Dead letters: stream `{keys.dead}`."
        if kind == "queue":
            return (
                f"Redis list `{name}`: producers RPUSH, workers move a batch into a processing"
                f" list and delete it once handled (at-least-once). Retries and delayed"
                f" messages wait in sorted set `{keys.delayed}`.{dead}{spread}"
            )
        if kind == "priority":
            return (
                f"Redis sorted set `{name}`: the lowest priority number first, FIFO within a"
                f" level; at-least-once. Retries and delayed messages wait in sorted set"
                f" `{keys.delayed}`.{dead}{spread}"
            )
        if kind == "stream":
            groups = ", ".join(f"`{g}`" for g in self.groups) or "none declared here"
            return (
                f"Redis stream `{name}`, read through consumer groups ({groups}); an entry"
                f" is acknowledged once handled (at-least-once).{dead}{spread}"
            )
        if kind == "channel":
            how = "pattern (PSUBSCRIBE)" if self.pattern else "channel"
            return f"Redis Pub/Sub {how} `{name}`: at-most-once, nothing is kept.{dead}"
        return f"A redisflow {kind} `{name}`.{dead}"


def _reply_json(handler: str, prefix: str, mid: str, message: _Message) -> dict[str, Any]:
    """The channel of the results a handler writes for its callers: no fixed address."""
    record, push = f"{prefix}:result:{{<id>}}", f"{prefix}:reply:{{<id>}}"
    about = (
        f"What `{handler}` returns to a caller that asked (`request`, or a send with"
        f" `result_ttl`): the string `{record}`, pushed on the sharded Pub/Sub channel `{push}`"
        " (braces included: a hash tag); `<id>` is the header `rf-result-id`, else the"
        " message id (a stream's: `<stream>/<entry id>`). The record is `1` and this JSON; a"
        ' final failure (dead-lettered, rejected, cancelled) is `0` and `["<where>", "<error>"]`.'
    )
    return {
        "address": None,
        "title": f"results of {handler}",
        "description": about,
        "messages": {mid: _message_json(message)},
        "x-redisflow": {"kind": "result", "record": record, "push": push},
    }


def _message_json(message: _Message) -> dict[str, Any]:
    return {
        "name": message.name,
        "title": message.name,
        "contentType": "application/json",
        "payload": message.schema if message.schema is not None else {},
    }


class _Book:
    """The channels, operations and schemas of one document, as they are found."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channels: dict[str, _Channel] = {}
        self.ids: dict[tuple[str, str], str] = {}  # (kind, name) -> channel id
        self.operations: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, tuple[str, str, str, _Message]] = {}
        self.pending: list[_Message] = []
        self.defs: dict[str, Any] = {}

    def channel(self, source: Source, partitions: int) -> tuple[str, _Channel]:
        key = (source.kind, source.name)
        if key not in self.ids:
            cid = identifier(f"{source.kind}.{source.name}", self.channels)
            self.ids[key] = cid
            self.channels[cid] = _Channel(Source(source.kind, source.name), 1, self.prefix)
        cid = self.ids[key]
        channel = self.channels[cid]
        channel.partitions = max(channel.partitions, partitions)
        return cid, channel

    def message(self, channel: _Channel, payload: Any, adapter: Any, mode: JsonSchemaMode) -> str:
        for mid, known in channel.messages.items():  # one message per type: a receive
            if known.payload == payload:  # and a send of the same type share it
                return mid
        mid = identifier(type_name(payload), channel.messages)
        found = _Message(type_name(payload), payload, adapter, mode)
        channel.messages[mid] = found
        self.pending.append(found)
        return mid

    def receive(self, handler: Handler) -> None:
        cid, channel = self.channel(handler.source, handler.options.partitions)
        if handler.source.group and handler.source.group not in channel.groups:
            channel.groups.append(handler.source.group)
        channel.pattern = channel.pattern or bool(handler.options.pattern)
        mid = self.message(channel, handler.payload, handler.adapter, "validation")
        oid = identifier(f"receive.{handler.name}", self.operations)
        doc = inspect.getdoc(handler.fn) or ""
        summary, _, rest = doc.partition("\n")
        ext: dict[str, Any] = {"handler": handler.name}
        if handler.source.group:
            ext["group"] = handler.source.group
        ext["options"] = options_json(handler.source.kind, handler.options)
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "title": handler.name,
            "messages": [{"$ref": f"#/channels/{cid}/messages/{mid}"}],
            "x-redisflow": ext,
        }
        if summary.strip():
            operation["summary"] = summary.strip()
        if rest.strip():
            operation["description"] = rest.strip()
        if handler.returns is not None:
            operation["reply"] = self.reply(handler, handler.returns)
        self.operations[oid] = operation

    def reply(self, handler: Handler, result: Any) -> dict[str, Any]:
        """The reply of a handler that returns ``result``: its channel and message."""
        rid = identifier(f"reply.{handler.name}", [*self.channels, *self.replies])
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(result)
        except Exception:  # a type pydantic cannot use: described as any JSON
            adapter = TypeAdapter(Any)
        message = _Message(type_name(result), result, adapter, "serialization")
        self.pending.append(message)
        mid = identifier(type_name(result))
        self.replies[rid] = (handler.name, self.prefix, mid, message)
        return {
            "address": {
                "location": "$message.header#/rf-result-id",
                "description": "the result's id: this header, else the message's id",
            },
            "channel": {"$ref": f"#/channels/{rid}"},
            "messages": [{"$ref": f"#/channels/{rid}/messages/{mid}"}],
        }

    def send(self, produced: Produced) -> None:
        cid, channel = self.channel(produced.source, 1)
        mid = self.message(channel, produced.payload, produced.adapter, "serialization")
        oid = f"send.{cid}"
        if oid not in self.operations:
            self.operations[oid] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{cid}"},
                "title": f"send to {produced.source.kind} {produced.source.name}",
                "messages": [],
            }
        operation = self.operations[oid]
        operation["messages"].append({"$ref": f"#/channels/{cid}/messages/{mid}"})
        if produced.summary:
            operation["summary"] = produced.summary

    def schemas(self) -> dict[str, Any]:
        """Fill in every message's payload schema; the named schemas they refer to."""
        usable: list[_Message] = []
        for message in self.pending:
            try:  # alone first: one type pydantic cannot describe must not sink the rest
                message.adapter.json_schema(mode=message.mode)
            except Exception as exc:
                message.schema = {"description": f"no JSON Schema for this type: {exc}"}
            else:
                usable.append(message)
        if usable:
            inputs = [(i, m.mode, m.adapter) for i, m in enumerate(usable)]
            found, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)
            for i, message in enumerate(usable):
                message.schema = _clean(found[(i, message.mode)])
            self.defs = {name: _clean(schema) for name, schema in defs.get("$defs", {}).items()}
        return self.defs


def _clean(schema: Any) -> Any:
    """A pydantic JSON Schema as an AsyncAPI Schema Object: a ``discriminator`` is the
    property name there (OpenAPI's object form is not allowed)."""
    if isinstance(schema, dict):
        out = {k: _clean(v) for k, v in schema.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"].get("propertyName", "")
        return out
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema
