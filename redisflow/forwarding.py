"""``Forward``: a method of a part offered by the object that holds the part, with the
part's signature and docs, so composition reads like one API without copying signatures.

    class Client:
        enqueue = Forward(Producers.enqueue, "producers")  # client.enqueue(...) calls
                                                           # client.producers.enqueue(...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")


class Forward(Generic[P, R]):
    """``obj.<name>`` is ``getattr(obj, via).<name>`` (``via`` may be a dotted path, one
    lookup per call fewer than forwarding twice); on the class, the method itself."""

    def __init__(self, method: Callable[Concatenate[Any, P], R], via: str) -> None:
        self.method = method
        self.via = via
        self.path = tuple(via.split("."))
        self.name = method.__name__
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Callable[Concatenate[Any, P], R]: ...

    @overload
    def __get__(self, obj: object, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(self, obj: object | None, owner: type[Any]) -> Any:
        if obj is None:
            return self.method
        for attr in self.path:
            obj = getattr(obj, attr)
        return getattr(obj, self.name)
