"""redisflow: an asyncio framework for Redis messaging.

Decorate async functions with ``@flow.on_channel``, ``@flow.on_queue``,
``@flow.on_priority`` or ``@flow.on_stream``; one event loop feeds them from Redis, with
payloads validated by pydantic from the handler's type hints. ``@flow.cron`` and
``@flow.every`` run them on a schedule, once per tick across every worker.
"""

from .app import Flow
from .client import Client
from .config import FlowConfig, HandlerOptions, RateLimit
from .errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    DecodeError,
    Defer,
    PermissionDenied,
    RedisflowError,
    Reject,
    ReplicationError,
    ReplyError,
    Retry,
    Skip,
)
from .features.pauses import Paused
from .features.ratelimit import Limiter
from .features.tracking import MessageStatus
from .message import Kind, Message, Source
from .middleware import Middleware, Outgoing
from .ops.deadletters import DeadLetters
from .protocol.records import DeadLetter

__all__ = [
    "AuthError",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "Defer",
    "Flow",
    "FlowConfig",
    "HandlerOptions",
    "Kind",
    "Limiter",
    "Message",
    "MessageStatus",
    "Middleware",
    "Outgoing",
    "Paused",
    "PermissionDenied",
    "RateLimit",
    "RedisflowError",
    "Reject",
    "ReplicationError",
    "ReplyError",
    "Retry",
    "Skip",
    "Source",
]
__version__ = "0.2.0"
