"""What a user configures, frozen and validated in one place: the flow, its handlers, rates.

``FlowConfig`` holds every option of a ``Flow`` (documented here, once); ``HandlerOptions``
those of one handler; ``RateLimit`` a rate. Each checks itself when built and raises
``ConfigError`` naming the bad value, so a mistake surfaces at start-up, never mid-run.
Change one with ``dataclasses.replace`` (the command line does, for ``--url``...).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .errors import ConfigError
from .keys import check_prefix

#: Where a flow connects when neither the code nor ``$REDISFLOW_URL`` says.
DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "REDISFLOW_URL"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_ms(seconds: object) -> int:
    """``seconds`` (a delay or a time-to-live, >= 0) in whole milliseconds."""
    if not _number(seconds) or seconds < 0:  # type: ignore[operator]
        raise ConfigError(f"delay and ttl must be >= 0 seconds, got {seconds!r}")
    return int(seconds * 1000)  # type: ignore[operator]


def _positive(name: str, value: object, *, above: float = 0.0, none: bool = False) -> None:
    if value is None and none:
        return
    if not _number(value) or value <= above:  # type: ignore[operator]
        allowed = " (or None)" if none else ""
        raise ConfigError(f"{name} must be a number > {above:g}{allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """The options of a ``Flow``.

    ``url``: where Redis is (``redis://``, ``rediss://`` for TLS, ``unix://``;
    ``docs/security.md`` lists the query options). ``prefix`` namespaces every key redisflow
    owns. ``name`` names this process's stream consumers (default ``host-pid``: give a stable
    name to re-read its own pending entries after a restart). ``grace_period``: how long
    in-flight handlers may run after a stop. ``lease``: how long a silent queue worker keeps
    its messages before peers take them back; ``claim_idle`` the same for stream entries.
    ``forget_consumers_after``: stream consumers of our groups that hold nothing and were not
    seen for that long (stopped or dead workers) are deleted from the group (None keeps
    them). ``batch_size``: the most messages one fetch takes; ``prefetch``: the most a
    consumer holds. ``block_timeout``: how long an idle fetch waits in Redis before asking
    again. ``dead_maxlen`` bounds each dead-letter stream. ``channel_buffer``: Pub/Sub
    messages waiting per handler before new ones are dropped. ``stream_start``: where a new
    consumer group starts reading (``0``: the whole stream, ``$``: new entries only).
    ``give_up_after``: how long the flow waits for an unreachable Redis (at start, or during
    an outage) before it fails; None waits forever. ``track`` keeps a status record of every
    message for ``track_ttl`` seconds. ``metrics_port`` serves Prometheus metrics.
    ``report_interval``: how often workers publish their counters for ``redisflow stats``.
    ``tick``: how often workers renew leases and move due retries. ``sharded_pubsub``:
    exact channels use sharded Pub/Sub (SSUBSCRIBE/SPUBLISH); None: on a cluster only.
    ``wait_replicas``: a producer call returns only once that many replicas acknowledged
    its writes (one ``WAIT`` per round trip), within ``wait_timeout`` seconds, else it raises
    ``ReplicationError``; ``wait_aof`` also waits for their AOF fsync (``WAITAOF``, Redis
    7.2+). See docs/reliability.md for what a failover loses with and without.
    ``channel_headers``: Pub/Sub messages carry the headers that middleware sets (tracing's
    ``traceparent``), in redisflow's envelope; off by default, so that subscribers of other
    clients keep getting plain JSON (headers a caller gives ``publish`` are always sent).
    """

    url: str = DEFAULT_URL
    prefix: str = "rf"
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    grace_period: float = 10.0
    lease: float = 15.0
    claim_idle: float = 30.0
    forget_consumers_after: float | None = 3600.0
    batch_size: int = 500
    prefetch: int = 1000
    block_timeout: float = 5.0
    dead_maxlen: int = 100_000
    channel_buffer: int = 10_000
    stream_start: str = "0"
    give_up_after: float | None = 60.0
    track: bool = False
    track_ttl: float = 86400.0
    metrics_port: int | None = None
    report_interval: float = 2.0
    tick: float = 0.5
    sharded_pubsub: bool | None = None
    wait_replicas: int = 0
    wait_timeout: float = 0.5
    wait_aof: bool = False
    channel_headers: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ConfigError(f"url must be a non-empty string, got {self.url!r}")
        check_prefix(self.prefix)
        if not isinstance(self.name, str) or not self.name or " " in self.name:
            raise ConfigError(f"name must be a non-empty string without spaces: {self.name!r}")
        if not _int(self.batch_size) or not 1 <= self.batch_size <= 2000:
            raise ConfigError(f"batch_size must be an int from 1 to 2000, got {self.batch_size!r}")
        if not _int(self.prefetch) or self.prefetch < 1:
            raise ConfigError(f"prefetch must be an int >= 1, got {self.prefetch!r}")
        _positive("lease", self.lease, above=1)
        _positive("claim_idle", self.claim_idle, above=1)
        _positive("forget_consumers_after", self.forget_consumers_after, none=True)
        _positive("give_up_after", self.give_up_after, none=True)
        for name in ("grace_period", "block_timeout", "track_ttl", "report_interval", "tick"):
            _positive(name, getattr(self, name))
        if not _int(self.dead_maxlen) or self.dead_maxlen < 1:
            raise ConfigError(f"dead_maxlen must be an int >= 1, got {self.dead_maxlen!r}")
        if not _int(self.channel_buffer) or self.channel_buffer < 1:
            raise ConfigError(f"channel_buffer must be an int >= 1, got {self.channel_buffer!r}")
        if not _int(self.wait_replicas) or self.wait_replicas < 0:
            raise ConfigError(f"wait_replicas must be an int >= 0, got {self.wait_replicas!r}")
        _positive("wait_timeout", self.wait_timeout)
        if self.metrics_port is not None and not (
            _int(self.metrics_port) and 0 <= self.metrics_port <= 65535
        ):
            raise ConfigError(f"metrics_port must be a TCP port, got {self.metrics_port!r}")

    @classmethod
    def build(cls, url: str | None = None, **options: Any) -> FlowConfig:
        """A config whose URL is ``url``, else ``$REDISFLOW_URL``, else the default."""
        if options.get("name") is None:
            options.pop("name", None)
        try:
            if url is None:  # '' is a mistake to report, not a reason to use the default
                url = os.environ.get(URL_ENV) or DEFAULT_URL
            return cls(url=url, **options)
        except TypeError as exc:  # an unknown option
            raise ConfigError(str(exc).replace("FlowConfig.__init__()", "Flow()")) from None

    @property
    def url_given(self) -> bool:
        """Whether the URL was chosen (in code or ``$REDISFLOW_URL``), not the default."""
        return self.url != DEFAULT_URL or bool(os.environ.get(URL_ENV))

    @property
    def claim_interval(self) -> float:
        """How often a stream consumer looks for entries of dead consumers."""
        return max(self.tick, self.claim_idle / 2)


class FlowOptions(TypedDict, total=False):
    """The keyword options of ``Flow()``: the fields of ``FlowConfig`` but ``url``."""

    prefix: str
    name: str | None
    grace_period: float
    lease: float
    claim_idle: float
    forget_consumers_after: float | None
    batch_size: int
    prefetch: int
    block_timeout: float
    dead_maxlen: int
    channel_buffer: int
    stream_start: str
    give_up_after: float | None
    track: bool
    track_ttl: float
    metrics_port: int | None
    report_interval: float
    tick: float
    sharded_pubsub: bool | None
    wait_replicas: int
    wait_timeout: float
    wait_aof: bool
    channel_headers: bool


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` grants per ``per`` seconds for each key.

    ``key`` maps a message payload to its limiter key (``None``: one limit shared by all).
    ``burst=None`` enforces the limit exactly in any window (sliding log); ``burst=n`` uses
    GCRA instead: one grant every ``per / limit`` seconds, with up to ``n`` at once.
    """

    limit: int
    per: float
    key: Callable[[Any], str] | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        if not _int(self.limit) or self.limit < 1:
            raise ConfigError(f"RateLimit: limit must be an int >= 1, got {self.limit!r}")
        if not _number(self.per) or self.per <= 0:
            raise ConfigError(f"RateLimit: per must be a number of seconds > 0, got {self.per!r}")
        if self.key is not None and not callable(self.key):
            raise ConfigError(f"RateLimit: key must be a callable or None, got {self.key!r}")
        if self.burst is not None and (not _int(self.burst) or self.burst < 1):
            raise ConfigError(f"RateLimit: burst must be None or an int >= 1, got {self.burst!r}")


@dataclass(frozen=True, slots=True)
class GroupLimits:
    """What each fair group of a queue may use, across every worker and process.

    ``concurrency``: at most that many messages of one group leased (being handled) at once
    (None: no limit). ``rate_limit``: at most ``limit`` messages of one group started per
    ``per`` seconds in any window (a sliding log; its ``key`` and ``burst`` must be None:
    the group is the key). ``GroupLimits()`` sets no limit: the groups are only served
    round robin.
    """

    concurrency: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and (not _int(self.concurrency) or self.concurrency < 1):
            raise ConfigError(
                f"GroupLimits: concurrency must be an int >= 1 or None, got {self.concurrency!r}"
            )
        rate = self.rate_limit
        if rate is not None:
            if not isinstance(rate, RateLimit):
                raise ConfigError(f"GroupLimits: rate_limit must be a RateLimit, got {rate!r}")
            if rate.key is not None or rate.burst is not None:
                raise ConfigError(
                    "GroupLimits: the rate limit applies per group (give neither key= nor burst=)"
                )


#: The largest ``batch`` of a batch handler, and the default ``batch_wait``.
MAX_BATCH = 10_000
DEFAULT_BATCH_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """The delivery options of one handler, each documented here once (the ``on_*``
    decorators take them as keywords: ``ChannelOptions``, ``QueueOptions``,
    ``StreamOptions`` say which apply to which kind). Checked when built: ConfigError.

    ``concurrency``: handlers running at once. ``max_attempts``: deliveries before the dead
    letters (channels: 1 unless given). ``retry_delay``/``retry_max_delay``: a failure is
    retried after ``retry_delay * 2**(attempt-1)`` seconds (jittered to [d/2, d], at most
    ``retry_max_delay``). ``timeout``: a handler running longer is cancelled (a failed
    attempt). ``at_most_once`` (queues): pop destructively, losing the messages in hand on a
    crash. ``idempotency_key`` (payload -> str): each key is handled once per
    ``idempotency_ttl`` seconds, crash-safely. ``rate_limit``: at most N handler starts per
    key per window across all workers. ``track`` overrides the flow's status tracking.
    ``pattern`` (channels): whether the name is a glob pattern (PSUBSCRIBE) or a literal
    channel; the decorator decides from the name when it is not given. ``partitions``
    (queues, priority queues, streams): spread the source over that many keys, and so over
    the masters of a cluster (``redisflow.features.partitions``); ``concurrency`` is shared
    by them. ``batch`` (queues, priority queues, streams): the handler takes a list of up to
    that many payloads (and a list of Messages), waiting at most ``batch_wait`` seconds
    (default 0.05) after the first for the batch to fill; ``concurrency`` then counts
    batches. ``groups`` (queues, priority queues): fair groups (``enqueue(..., group=)``)
    served round robin, each within the ``GroupLimits`` given. ``result_ttl`` (queues,
    priority queues, streams): keep every message's result that many seconds, asked for or
    not (``Flow.result``; a message that asks keeps its own for the TTL it asks).
    """

    concurrency: int = 16
    max_attempts: int = 5
    retry_delay: float = 1.0
    retry_max_delay: float = 300.0
    timeout: float | None = None
    at_most_once: bool = False
    idempotency_key: Callable[[Any], str] | None = None
    idempotency_ttl: float = 86400.0
    rate_limit: RateLimit | None = None
    track: bool | None = None
    pattern: bool | None = None
    partitions: int = 1
    batch: int | None = None
    batch_wait: float | None = None
    groups: GroupLimits | None = None
    result_ttl: float | None = None

    def __post_init__(self) -> None:
        if not _int(self.concurrency) or self.concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {self.concurrency!r}")
        if not _int(self.max_attempts) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not (_number(self.retry_delay) and _number(self.retry_max_delay)) or not (
            0 <= self.retry_delay <= self.retry_max_delay
        ):
            raise ConfigError("need 0 <= retry_delay <= retry_max_delay")
        if self.timeout is not None and (not _number(self.timeout) or self.timeout <= 0):
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.idempotency_key is not None and not callable(self.idempotency_key):
            raise ConfigError("idempotency_key must be a function of the payload")
        if not _number(self.idempotency_ttl) or self.idempotency_ttl <= 0:
            raise ConfigError("idempotency_ttl must be > 0 seconds")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ConfigError(f"rate_limit must be a RateLimit, got {self.rate_limit!r}")
        for name in ("at_most_once", "track", "pattern"):
            value = getattr(self, name)
            if not isinstance(value, bool) and (value is not None or name == "at_most_once"):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        if isinstance(self.partitions, bool) or not _int(self.partitions):
            raise ConfigError(f"partitions must be an int, got {self.partitions!r}")
        self._check_batch_and_groups()

    def _check_batch_and_groups(self) -> None:
        if self.batch is not None and (not _int(self.batch) or not 1 <= self.batch <= MAX_BATCH):
            raise ConfigError(f"batch must be an int from 1 to {MAX_BATCH}, got {self.batch!r}")
        if self.batch_wait is not None:
            if self.batch is None:
                raise ConfigError("batch_wait needs batch= (the most messages per call)")
            if not _number(self.batch_wait) or self.batch_wait < 0:
                raise ConfigError(f"batch_wait must be >= 0 seconds, got {self.batch_wait!r}")
        if self.groups is not None and not isinstance(self.groups, GroupLimits):
            raise ConfigError(f"groups must be a GroupLimits, got {self.groups!r}")
        if self.result_ttl is not None and (not _number(self.result_ttl) or self.result_ttl <= 0):
            raise ConfigError(f"result_ttl must be > 0 seconds, got {self.result_ttl!r}")
        if self.groups is not None and self.at_most_once:
            raise ConfigError("groups= needs at-least-once delivery (not at_most_once=True)")

    @property
    def fill_wait(self) -> float:
        """How long a batch handler waits for its batch to fill after the first message."""
        return DEFAULT_BATCH_WAIT if self.batch_wait is None else self.batch_wait

    @classmethod
    def build(cls, kind: str, options: dict[str, Any]) -> HandlerOptions:
        """The options of a handler of ``kind``: ConfigError naming an option that does
        not apply to that kind (or does not exist)."""
        allowed = set(KIND_OPTIONS[kind].__annotations__)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown option{'s' * (len(unknown) > 1)} for a {kind} handler:"
                f" {', '.join(unknown)} (one of {', '.join(sorted(allowed))})"
            )
        if kind == "channel":
            options = {"max_attempts": 1, **options}  # Pub/Sub cannot deliver again
        return cls(**options)


class _Options(TypedDict, total=False):
    """What every handler takes (``HandlerOptions`` documents each)."""

    concurrency: int
    max_attempts: int
    retry_delay: float
    retry_max_delay: float
    timeout: float | None
    track: bool | None


class ChannelOptions(_Options, total=False):
    """The keyword options of ``Flow.on_channel``."""

    pattern: bool | None


class StreamOptions(_Options, total=False):
    """The keyword options of ``Flow.on_stream`` (besides ``group``)."""

    idempotency_key: Callable[[Any], str] | None
    idempotency_ttl: float
    rate_limit: RateLimit | None
    partitions: int
    batch: int | None
    batch_wait: float | None
    result_ttl: float | None


class QueueOptions(StreamOptions, total=False):
    """The keyword options of ``Flow.on_queue`` and ``Flow.on_priority``."""

    at_most_once: bool
    groups: GroupLimits | None


class ScheduleOptions(_Options, total=False):
    """The keyword options of ``Flow.cron`` and ``Flow.every`` (besides ``name`` and
    ``missed``): each tick runs as a message of the schedule's internal queue."""


KIND_OPTIONS: dict[str, type[_Options]] = {
    "channel": ChannelOptions,
    "queue": QueueOptions,
    "priority": QueueOptions,
    "stream": StreamOptions,
    "schedule": ScheduleOptions,
}
