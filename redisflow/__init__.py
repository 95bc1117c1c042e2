"""redisflow: an asyncio framework for Redis messaging.

Decorate async functions with ``@flow.on_channel``, ``@flow.on_queue``,
``@flow.on_priority`` or ``@flow.on_stream``; one event loop feeds them from Redis, with
payloads validated by pydantic from the handler's type hints. ``@flow.cron`` and
``@flow.every`` run them on a schedule, once per tick across every worker.
"""

from .app import Flow
from .client import Client
from .config import FlowConfig, GroupLimits, HandlerOptions, RateLimit
from .errors import (
    AuthError,
    BatchFailed,
    ConfigError,
    ConnectionLost,
    DecodeError,
    Defer,
    PermissionDenied,
    RedisflowError,
    Reject,
    RemoteError,
    ReplicationError,
    ReplyError,
    RequestTimeout,
    Retry,
    Skip,
)
from .features.pauses import Paused
from .features.ratelimit import Limiter
from .features.tracking import MessageStatus
from .message import Kind, Message, MessageBatch, Source
from .middleware import Middleware, Outgoing
from .ops.deadletters import DeadLetters
from .protocol.records import DeadLetter

__all__ = [
    "AuthError",
    "BatchFailed",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "Defer",
    "Flow",
    "FlowConfig",
    "GroupLimits",
    "HandlerOptions",
    "Kind",
    "Limiter",
    "Message",
    "MessageBatch",
    "MessageStatus",
    "Middleware",
    "Outgoing",
    "Paused",
    "PermissionDenied",
    "RateLimit",
    "RedisflowError",
    "Reject",
    "RemoteError",
    "ReplicationError",
    "ReplyError",
    "RequestTimeout",
    "Retry",
    "Skip",
    "Source",
]
__version__ = "0.2.0"
