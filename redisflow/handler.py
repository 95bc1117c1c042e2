"""A handler: the user's function plus everything decided about it at decoration time."""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
from pydantic import TypeAdapter

from .config import HandlerOptions
from .errors import ConfigError
from .features.schedules import Schedule
from .keys import check_name
from .message import KINDS, Message, Source

HandlerFunc = Callable[..., Any]


def _is_message(annotation: Any) -> bool:
    return annotation is Message or typing.get_origin(annotation) is Message


#: What a batch handler's parameters may be annotated with: ``list[T]`` and its kin.
_LISTS = (list, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)


def _element(annotation: Any) -> Any:
    """The element type of a list annotation (``list[Event]`` -> ``Event``), else None."""
    if annotation in _LISTS:
        return Any
    if typing.get_origin(annotation) in _LISTS:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler, frozen at decoration time.

    ``invoke(value, message)`` calls the function with the payload and/or the Message in the
    order its signature asks; ``adapter`` turns bytes or a field map into the payload, built
    once from the payload parameter's type. A batch handler (``options.batch``) takes
    ``list[T]`` and ``list[Message[T]]``: ``adapter`` validates one ``T``, and ``invoke``
    gets the two lists.
    """

    fn: HandlerFunc
    source: Source
    options: HandlerOptions
    adapter: TypeAdapter[Any]
    wants_message: bool
    invoke: Callable[[Any, Message[Any] | None], Awaitable[Any]]
    deps: tuple[tuple[str, Any], ...] = ()  # keyword parameters filled from resources
    order: tuple[str, ...] = ("payload",)  # positional parameters: "payload"/"message"
    payload: Any = Any  # the payload's type, as the adapter was built from it
    schedule: Schedule | None = None  # when its ticks fall (a schedule's handler)
    #: What it says it returns, a result a caller may wait for (its ``return`` annotation;
    #: None: nothing, or a batch handler or a schedule, whose return value is no result)
    returns: Any = None

    @property
    def name(self) -> str:
        """The function's qualified name, used in logs and dead letters."""
        return getattr(self.fn, "__qualname__", repr(self.fn))

    @property
    def identity(self) -> str:
        """Its module, name and payload type: ``app.send(app.Email)`` (two apps handling
        one source differ in it: ``ops/handlers.py``)."""
        payload = self.payload
        shown = getattr(payload, "__qualname__", None) or repr(payload)
        module = getattr(payload, "__module__", "builtins")
        shown = shown if module in ("builtins", "typing") else f"{module}.{shown}"
        return f"{getattr(self.fn, '__module__', '?')}.{self.name}({shown})"

    @classmethod
    def build(
        cls,
        fn: HandlerFunc,
        source: Source,
        options: HandlerOptions,
        schedule: Schedule | None = None,
    ) -> Handler:
        """Inspect ``fn`` and build its Handler, or raise ConfigError naming it. A
        ``schedule``'s handler takes no payload: its parameters are a ``Message`` and
        resources."""
        where = f"handler {getattr(fn, '__qualname__', fn)!r}"
        if not callable(fn):
            raise ConfigError(f"{where} is not callable")
        call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
        if any(inspect.isasyncgenfunction(f) or inspect.isgeneratorfunction(f) for f in (fn, call)):
            raise ConfigError(
                f"{where} is a generator (it uses yield): calling it would not run its body;"
                " a handler returns, it does not yield"
            )
        try:
            signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn, include_extras=True)
        except (NameError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read its signature: {exc}") from None
        batch = options.batch is not None
        returns = hints.get("return")
        if batch or schedule is not None or returns in (type(None), typing.NoReturn):
            returns = None
        if batch:
            hints = _batch_hints(where, signature, hints)
        payload_type, order, deps = _parameters(where, signature, hints, schedule is None)
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(payload_type)
        except Exception as exc:  # pydantic raises several kinds for unusable types
            raise ConfigError(
                f"{where}: payload type {payload_type!r} is unusable: {exc}"
            ) from None
        invoke = _invoker(fn, tuple(order))
        wants, deps_, order_ = "message" in order, tuple(deps), tuple(order)
        return cls(
            fn, source, options, adapter, wants, invoke, deps_, order_, payload_type, schedule,
            returns,
        )  # fmt: skip

    def clash(self, others: Iterable[Handler]) -> str | None:
        """Why this handler cannot join ``others`` (None when it can): its source has one
        already; its name is already a key of another type (a queue, a priority queue and a
        stream are each one key: a producer of the other kind would get WRONGTYPE), or a
        schedule's (whose keys are those of its name: they would be shared). A channel is
        no key."""
        source = self.source
        for other in others:
            if other.source == source:
                return f"{source} already has a handler, {other.name!r}"
            kinds = {source.kind, other.source.kind}
            if other.source.name != source.name or len(kinds) == 1:
                continue
            if "schedule" in kinds:
                return f"{other.source} has the same name ({other.name!r})"
            if "channel" not in kinds:
                return (
                    f"{source.name!r} is already a {other.source.kind} (handler"
                    f" {other.name!r}); a name is one Redis key, of one type"
                )
        return None

    def unprovided(self, provided: Collection[Any]) -> str | None:
        """What ``bind`` would refuse with ``provided`` resource types: the parameters that
        none of them fills (None: every one is)."""
        missing = [f"{name}: {kind!r}" for name, kind in self.deps if kind not in provided]
        if not missing:
            return None
        return (
            f"handler {self.name!r}: no resource provides {', '.join(missing)}"
            " (register one with @flow.resource)"
        )

    @property
    def threaded(self) -> bool:
        """Whether the handler is a plain function, run in a worker thread (which nothing
        can interrupt: a cancel takes effect when it returns)."""
        return _threaded(self.fn)

    def bind(self, resources: Mapping[Any, Any]) -> Callable[[Any, Any], Awaitable[Any]]:
        """The call adapter with this handler's resource parameters filled in."""
        if not self.deps:
            return self.invoke
        problem = self.unprovided(resources)
        if problem:
            raise ConfigError(problem)
        bound = partial(self.fn, **{name: resources[kind] for name, kind in self.deps})
        return _invoker(bound, self.order)


def _batch_hints(where: str, signature: inspect.Signature, hints: dict[str, Any]) -> dict[str, Any]:
    """A batch handler's hints with its lists unwrapped (``list[Event]`` -> ``Event``,
    ``list[Message[Event]]`` -> ``Message[Event]``), so that its parameters sort as a
    plain handler's; ConfigError for a payload or Message parameter that is not a list."""
    unwrapped = dict(hints)
    payload = message = False
    for param in signature.parameters.values():
        if param.kind is param.KEYWORD_ONLY:
            continue
        annotation = hints.get(param.name, inspect.Parameter.empty)
        element = _element(annotation)
        if _is_message(annotation):
            raise ConfigError(
                f"{where}: a batch handler takes list[Message], not Message"
                f" (parameter {param.name!r})"
            )
        if element is not None and _is_message(element) and not message:
            message = True
            unwrapped[param.name] = element
        elif not payload:
            payload = True
            if element is not None:
                unwrapped[param.name] = element
            elif annotation is not inspect.Parameter.empty:
                raise ConfigError(
                    f"{where}: a batch handler takes its payloads as list[...]: parameter"
                    f" {param.name!r} is annotated {annotation!r}"
                )
    return unwrapped


def _parameters(
    where: str, signature: inspect.Signature, hints: dict[str, Any], payload: bool = True
) -> tuple[Any, list[str], list[tuple[str, Any]]]:
    """Sort a handler's parameters: the payload (and its type; none when not ``payload``),
    the Message, resources."""
    payload_type: Any = Any
    order: list[str] = []  # "payload" / "message", in call order
    deps: list[tuple[str, Any]] = []  # keyword parameters filled from flow resources
    for param in signature.parameters.values():
        annotation = hints.get(param.name, inspect.Parameter.empty)
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"{where}: *args/**kwargs parameters are not supported")
        if _is_message(annotation) and "message" not in order:
            order.append("message")
            args = typing.get_args(annotation)
            if args and "payload" not in order and payload:
                payload_type = args[0]
        elif payload and "payload" not in order and param.kind is not param.KEYWORD_ONLY:
            order.append("payload")
            if annotation is not inspect.Parameter.empty:
                payload_type = annotation
        elif annotation is not inspect.Parameter.empty and param.default is param.empty:
            deps.append((param.name, annotation))  # a resource, bound at start
        elif param.default is param.empty:
            what = "the payload, a Message," if payload else "a Message (a schedule has no payload)"
            raise ConfigError(
                f"{where}: parameter {param.name!r} is neither {what}"
                " nor annotated with the type of a resource"
            )
    return payload_type, order, deps


def _threaded(fn: Any) -> bool:
    """Whether ``fn`` is no async function (nor an async callable object): run in a thread."""
    return not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def _invoker(fn: HandlerFunc, order: tuple[str, ...]) -> Callable[[Any, Any], Awaitable[Any]]:
    """A call adapter for ``fn``: async functions are awaited, plain ones run in a thread."""
    if _threaded(fn):

        async def threaded(value: Any, message: Any) -> Any:
            args = [value if part == "payload" else message for part in order]
            return await anyio.to_thread.run_sync(partial(fn, *args))

        return threaded
    if order == ("payload",):
        return lambda value, message: fn(value)
    if order == ("payload", "message"):
        return lambda value, message: fn(value, message)
    if order == ("message", "payload"):
        return lambda value, message: fn(message, value)
    if order == ("message",):
        return lambda value, message: fn(message)
    return lambda value, message: fn()


@dataclass(frozen=True, slots=True)
class Produced:
    """What an app declares it sends (``Flow.produces``): messages of ``payload``'s type to
    the source ``source``. Documentation (``redisflow docs``), not a check on sends."""

    source: Source
    payload: Any
    adapter: TypeAdapter[Any]
    summary: str | None = None

    @classmethod
    def build(cls, name: str, payload: Any, kind: str, summary: str | None) -> Produced:
        """Check the declaration; ConfigError naming it when something is unusable."""
        where = f"flow.produces({name!r})"
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        try:
            check_name(name, kind)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        source = Source(kind, name)
        if summary is not None and not isinstance(summary, str):
            raise ConfigError(f"{where}: summary must be a string, got {summary!r}")
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(payload)
        except Exception as exc:  # pydantic raises several kinds for unusable types
            raise ConfigError(f"{where}: payload type {payload!r} is unusable: {exc}") from None
        return cls(source, payload, adapter, summary)
