"""redisflow: an asyncio framework for Redis messaging.

Decorate async functions with ``@flow.on_channel``, ``@flow.on_queue``,
``@flow.on_priority`` or ``@flow.on_stream``; one event loop feeds them from Redis, with
payloads validated by pydantic from the handler's type hints.
"""

from .app import Flow
from .client import Client
from .config import FlowConfig, HandlerOptions, RateLimit
from .errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    DecodeError,
    PermissionDenied,
    RedisflowError,
    Reject,
    ReplicationError,
    ReplyError,
    Retry,
)
from .features.ratelimit import Limiter
from .features.tracking import MessageStatus
from .message import Kind, Message, Source
from .ops.deadletters import DeadLetter, DeadLetters

__all__ = [
    "AuthError",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "Flow",
    "FlowConfig",
    "HandlerOptions",
    "Kind",
    "Limiter",
    "Message",
    "MessageStatus",
    "PermissionDenied",
    "RateLimit",
    "RedisflowError",
    "Reject",
    "ReplicationError",
    "ReplyError",
    "Retry",
    "Source",
]
__version__ = "0.2.0"
