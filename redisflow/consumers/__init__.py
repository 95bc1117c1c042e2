"""The consumers: one kind per Redis primitive, over what ``base.Consumer`` shares.

The path of a message, fetch to ack: ``<kind>.py`` ``fetch_loop`` (a Lua script or a
blocking read) -> ``base.py`` ``_work`` (decode, call the handler, through its middleware
chain when it has one) -> ``<kind>.py`` ``done`` (ack with the next request) or
``verdicts.py`` (retry or dead letter) -> ``<kind>.py`` ``retry``/``bury``.
"""

from __future__ import annotations

from typing import Any

from ..message import Kind
from .base import Consumer
from .channel import ChannelConsumer
from .contract import Context, Gate, Stats
from .priority import PriorityConsumer
from .pubsub import ChannelHub
from .queue import QueueConsumer
from .schedule import ScheduleConsumer, TickOutcome
from .stream import StreamConsumer

CONSUMERS: dict[Kind, type[Consumer[Any]]] = {
    "channel": ChannelConsumer,
    "queue": QueueConsumer,
    "priority": PriorityConsumer,
    "stream": StreamConsumer,
    "schedule": ScheduleConsumer,
}

__all__ = [
    "CONSUMERS",
    "ChannelConsumer",
    "ChannelHub",
    "Consumer",
    "Context",
    "Gate",
    "Stats",
    "TickOutcome",
]
