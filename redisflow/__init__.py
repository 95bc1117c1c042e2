"""redisflow: an asyncio framework for Redis messaging.

Decorate async functions with ``@flow.on_channel``, ``@flow.on_queue``,
``@flow.on_priority`` or ``@flow.on_stream``; one event loop feeds them from Redis, with
payloads validated by pydantic from the handler's type hints.
"""

from .app import Flow
from .errors import ConfigError, DecodeError, RedisflowError, Reject, Retry
from .message import Message, Source
from .ratelimit import Limiter, RateLimit
from .tracking import MessageStatus

__all__ = [
    "ConfigError",
    "DecodeError",
    "Flow",
    "Limiter",
    "Message",
    "MessageStatus",
    "RateLimit",
    "RedisflowError",
    "Reject",
    "Retry",
    "Source",
]
__version__ = "0.1.0"
