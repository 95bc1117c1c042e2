"""Start-up and shutdown of a flow's own resources: hooks, and resources handed to handlers.

    @flow.on_startup
    async def warm_up() -> None: ...

    @flow.resource                       # entered before the consumers start, closed after
    async def http() -> AsyncIterator[HttpClient]:
        async with HttpClient() as client:
            yield client

    @flow.on_queue("hooks")
    async def call(hook: Hook, client: HttpClient) -> None: ...   # injected by its type

A resource function is an async generator (set-up, ``yield`` the value, tear-down) or a
plain async function returning the value; its return annotation names the type that
handlers ask for. Hooks may be sync or async and take no arguments.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from .errors import ConfigError

Hook = Callable[[], Any]


def resource_type(fn: Callable[..., Any]) -> Any:
    """The type a resource function provides, from its return annotation."""
    where = f"resource {getattr(fn, '__qualname__', fn)!r}"
    try:
        hint = typing.get_type_hints(fn).get("return")
    except (NameError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot read its return annotation: {exc}") from None
    if hint is None:
        raise ConfigError(f"{where}: annotate its return type (the type handlers ask for)")
    if inspect.isasyncgenfunction(fn):
        origin = typing.get_origin(hint)
        if origin not in (collections.abc.AsyncIterator, collections.abc.AsyncGenerator):
            raise ConfigError(f"{where}: an async generator must return AsyncIterator[T]")
        return typing.get_args(hint)[0]
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"{where}: must be an async function or async generator")
    return hint


class Lifespan:
    """The hooks and resources of one flow."""

    def __init__(self) -> None:
        self.startup: list[Hook] = []
        self.shutdown: list[Hook] = []
        self.resources: dict[Any, Callable[[], Any]] = {}

    def add_resource(self, fn: Callable[[], Any]) -> None:
        """Register a resource function (see the module docstring)."""
        kind = resource_type(fn)
        if kind in self.resources:
            raise ConfigError(f"a resource of type {kind!r} is already registered")
        self.resources[kind] = fn

    async def enter(self, stack: AsyncExitStack) -> dict[Any, Any]:
        """Run the start-up hooks and open the resources; ``stack`` closes them later."""
        for hook in self.startup:
            await _call(hook)
        values: dict[Any, Any] = {}
        for kind, fn in self.resources.items():
            if inspect.isasyncgenfunction(fn):
                values[kind] = await stack.enter_async_context(asynccontextmanager(fn)())
            else:
                values[kind] = await fn()
        return values

    async def leave(self) -> None:
        """Run the shutdown hooks (after the resources are closed)."""
        for hook in self.shutdown:
            await _call(hook)


async def _call(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result
