"""Exceptions raised by redisflow, and the two signals a handler may raise.

Failures derive from ``RedisflowError``. Talking to Redis can fail in two ways, and callers
treat them differently (docs/design.md, "Errors"):

- ``ConnectionLost``: no answer (refused, reset, timed out, a server still loading its data
  or demoted to a replica). A loop reconnects with backoff; a producer call is sent again.
  It is also a builtin ``ConnectionError``.
- ``ReplyError``: Redis answered with an error (``code`` is its first word: ``NOSCRIPT``,
  ``MOVED``, ``NOPERM``, ``OOM``...). Sending the same command again gets the same answer,
  except for the redirections a cluster router follows.

``Retry``, ``Reject``, ``Skip`` and ``Defer`` are not failures but signals: a handler (or a
middleware) raises them to steer what happens to its message; a batch handler raises
``BatchFailed`` to give some of its messages such a verdict and acknowledge the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message


class RedisflowError(Exception):
    """Root of every error redisflow raises."""


class ConfigError(RedisflowError, ValueError):
    """Raised when a flow, a handler, a URL or a producer call is configured wrongly."""


class DecodeError(RedisflowError):
    """Raised when a message cannot be decoded or does not validate against its handler;
    ``summary`` is one line (what the log says), the message every detail (what the dead
    letter keeps)."""

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or (message.splitlines() or [""])[0]


class ConnectionLost(RedisflowError, ConnectionError):
    """Raised when Redis cannot be reached, or stops answering on a connection."""


class ReplyError(RedisflowError):
    """Raised when Redis answers a command with an error; ``code`` is the error's first word
    (``NOSCRIPT``, ``MOVED``, ``WRONGTYPE``...), ``ERR`` for generic errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        word = message.split(" ", 1)[0]
        self.code = word if word.isupper() else "ERR"


class AuthError(ReplyError):
    """Raised when Redis refuses the credentials (``WRONGPASS``, ``NOAUTH``): reconnecting
    cannot help, so loops fail at once instead of waiting for a cure."""


class PermissionDenied(ReplyError):
    """Raised when the ACL user may not run a command or touch a key (``NOPERM``); the
    message names what was refused (see docs/security.md for the rules each feature needs)."""


class ReplicationError(RedisflowError):
    """Raised when fewer replicas acknowledged a write than ``wait_replicas`` asks for. The
    write happened on the primary: the message may exist, and may be lost in a failover."""


class RemoteError(RedisflowError):
    """Raised by ``request`` and ``result`` when the handler failed for good: ``where`` says
    how (``dead-lettered``, ``rejected``, ``cancelled``), ``error`` is its error text, ``id``
    the result id asked for."""

    def __init__(self, where: str, error: str, result_id: str = "") -> None:
        super().__init__(f"{where}: {error}")
        self.where = where
        self.error = error
        self.id = result_id


class RequestTimeout(RedisflowError, TimeoutError):
    """Raised by ``request`` when no result came within its ``timeout``: the message was
    sent and still runs; ``id`` is its result id, for ``result(id)`` later."""

    def __init__(self, message: str, result_id: str) -> None:
        super().__init__(message)
        self.id = result_id


class HandlerSignal(Exception):
    """Base of the signals a handler raises to steer what happens to its message."""


class Retry(HandlerSignal):
    """Raised by a handler to retry its message, optionally after ``delay`` seconds.

    The attempt still counts toward ``max_attempts``.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Reject(HandlerSignal):
    """Raised by a handler to send its message to the dead letters at once, with ``reason``."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


class Skip(HandlerSignal):
    """Raised (by the idempotency middleware, or a handler) when a message was already
    handled: it is settled as done without running the rest of the chain, and counted as
    ``skipped``."""


class Defer(HandlerSignal):
    """Raised to deliver the message again after ``delay`` seconds without counting an
    attempt (a rate limit, a duplicate running elsewhere): not a failure."""

    def __init__(self, delay: float, reason: str = "deferred") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class BatchFailed(HandlerSignal):
    """Raised by a batch handler to fail some of its messages and acknowledge the others.

    ``failures`` maps an index in the lists the handler got to what happens to that message:
    ``Retry``, ``Reject``, ``Defer``, ``Skip``, or any other exception (a failed attempt:
    retried, or dead-lettered after ``max_attempts``). A message whose index is not there
    is acknowledged. ``raise BatchFailed({3: ValueError("bad row"), 7: Reject("dup")})``.

    Middleware sees it with ``resolved``: (message, exception) pairs, filled in by the
    framework, which are what count (a middleware that builds one for messages it kept
    from the handler uses ``BatchFailed.of``).
    """

    def __init__(self, failures: Mapping[int, BaseException]) -> None:
        super().__init__(f"{len(failures)} messages of the batch failed")
        self.failures = dict(failures)
        self.resolved: list[tuple[Message[Any], BaseException]] = []

    @classmethod
    def of(cls, resolved: list[tuple[Message[Any], BaseException]]) -> BatchFailed:
        """One that names the messages themselves (for middleware)."""
        failed = cls({})
        failed.resolved = list(resolved)
        return failed
