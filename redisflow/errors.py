"""Exceptions raised by redisflow, and the two signals a handler may raise."""

from __future__ import annotations


class RedisflowError(Exception):
    """Root of every error redisflow raises."""


class ConfigError(RedisflowError, ValueError):
    """Raised when a flow, a handler or a producer call is configured wrongly."""


class DecodeError(RedisflowError):
    """Raised when a message cannot be decoded or does not validate against its handler."""


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
