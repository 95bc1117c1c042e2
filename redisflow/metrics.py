"""Prometheus metrics (``pip install prometheus-client``; ``Flow(metrics_port=9108)``
or ``redisflow run --metrics-port 9108``).

Exported on ``http://<host>:<port>/metrics``, from a registry of the flow's own:

- ``redisflow_messages_total{source,handler,outcome}``: processed, retried, dead, dropped,
  skipped, deferred (read from the consumers' counters at scrape time: no cost per message)
- ``redisflow_reconnects_total{source,handler}``
- ``redisflow_handler_seconds{source,handler}``: histogram of handler run time
- ``redisflow_in_flight{source,handler}``: messages held by this process
- ``redisflow_queue_depth{source,partition}``, ``redisflow_stream_lag{source,partition,group}``,
  ``redisflow_stream_pending{source,partition,group}``,
  ``redisflow_dead_letters{source,partition}``: read from Redis every ``interval`` seconds,
  for each key of the source (``partition`` is the key: the source's name unless it is
  partitioned)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio

from .connection import CONNECTION_ERRORS
from .consumers.contract import Stats
from .consumers.kinds import TRAITS
from .errors import ConfigError, ReplyError
from .features.groups import sizes_at
from .protocol.replies import mapping

if TYPE_CHECKING:
    from .connection import Connector
    from .consumers.base import Consumer
    from .handler import Handler
    from .message import Message
    from .middleware import ConsumeNext

log = logging.getLogger("redisflow")

OUTCOMES = tuple(name for name in Stats.FIELDS if name != "reconnects")


class Metrics:
    """The metrics of one running flow, served over HTTP while it runs."""

    def __init__(self, port: int, interval: float = 5.0) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise ConfigError(
                "metrics need prometheus_client:"
                " pip install prometheus-client (the prometheus extra)"
            ) from None
        self.consumers: list[Consumer[Any]] = []
        self.port, self.interval = port, interval
        self.registry = prom.CollectorRegistry()
        labels = ["source", "handler"]
        self.seconds = prom.Histogram(
            "redisflow_handler_seconds", "Handler run time.", labels, registry=self.registry
        )
        keyed = ["source", "partition"]
        self.depth = prom.Gauge(
            "redisflow_queue_depth", "Messages waiting.", keyed, registry=self.registry
        )
        self.lag = prom.Gauge(
            "redisflow_stream_lag", "Entries not yet read by the group.", [*keyed, "group"],
            registry=self.registry,
        )  # fmt: skip
        self.pending = prom.Gauge(
            "redisflow_stream_pending", "Entries read but not acked.", [*keyed, "group"],
            registry=self.registry,
        )  # fmt: skip
        self.dead = prom.Gauge(
            "redisflow_dead_letters", "Dead letters kept.", keyed, registry=self.registry
        )
        self.registry.register(_Counters(self.consumers, CounterMetricFamily, GaugeMetricFamily))
        self._server: Any = None

    def timing(self, handler: Handler) -> Timing:
        """The consume middleware that records the run time of ``handler``."""
        return Timing(self.seconds.labels(str(handler.source), handler.name).observe)

    def watch(self, consumers: list[Consumer[Any]]) -> None:
        """Export the counters and gauges of ``consumers``."""
        self.consumers[:] = consumers

    def serve(self) -> None:
        """Start the HTTP endpoint (a thread of prometheus_client)."""
        import prometheus_client as prom

        self._server, _ = prom.start_http_server(self.port, registry=self.registry)
        log.info("metrics on http://0.0.0.0:%d/metrics", self.port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def poll(self, connector: Connector) -> None:
        """Refresh the gauges read from Redis, every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.refresh(connector)
            except CONNECTION_ERRORS:
                pass
            except ReplyError as exc:  # e.g. a stream deleted under us: try again later
                log.debug("metrics: %s", exc)
            await anyio.sleep(self.interval)

    async def refresh(self, connector: Connector) -> None:
        """Read depths, lags and dead-letter counts of every consumer's key (a source, or
        one partition of it: the ``partition`` label) in one pipelined round trip."""
        commands: list[tuple[Any, ...]] = []
        for consumer in self.consumers:
            traits = TRAITS[consumer.kind]
            held = traits.holder(consumer.key, consumer.keys)  # a schedule: its runs
            commands.append((*traits.depth, held) if traits.depth else ("PING",))
            commands.append(("XLEN", consumer.keys.dead))
        replies = await connector.send.many(*commands) if commands else []
        grouped: list[Any] = []  # consumers of fair groups: their depth needs more reads
        for i, consumer in enumerate(self.consumers):
            traits = TRAITS[consumer.kind]
            source, part = str(consumer.handler.source), consumer.key
            reply, dead = replies[2 * i], replies[2 * i + 1]
            self.dead.labels(source, part).set(dead)
            if traits.grouped:
                for group in reply:
                    info = mapping(group)
                    name = info[b"name"].decode()
                    self.pending.labels(source, part, name).set(info[b"pending"])
                    if info.get(b"lag") is not None:
                        self.lag.labels(source, part, name).set(info[b"lag"])
            elif getattr(consumer, "group_mode", None) is not None:
                grouped.append(consumer)  # every group waits, not only the key's default
            elif traits.depth:
                self.depth.labels(source, part).set(reply)
        for consumer in grouped:
            sizes, _ = await sizes_at(connector, consumer.keys, consumer.group_mode)
            self.depth.labels(str(consumer.handler.source), consumer.key).set(sum(sizes.values()))


class Timing:
    """A consume middleware that observes the run time of the rest of the chain (the
    handler: the flow puts it innermost) in a histogram."""

    def __init__(self, observe: Callable[[float], object]) -> None:
        self.observe = observe

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """Time the rest of the chain."""
        began = time.perf_counter()
        try:
            return await call_next(msg)
        finally:
            self.observe(time.perf_counter() - began)


class _Counters:
    """Counters read from the consumers' ``Stats`` at scrape time."""

    def __init__(self, consumers: list[Consumer[Any]], counter: Any, gauge: Any) -> None:
        self.consumers, self.counter, self.gauge = consumers, counter, gauge

    def collect(self) -> Iterator[Any]:
        labels = ["source", "handler"]
        messages = self.counter(
            "redisflow_messages", "Messages by outcome.", labels=[*labels, "outcome"]
        )
        reconnects = self.counter("redisflow_reconnects", "Reconnections.", labels=labels)
        in_flight = self.gauge("redisflow_in_flight", "Messages held.", labels=labels)
        for consumer in self.consumers:
            key = [str(consumer.handler.source), consumer.handler.name]
            for outcome in OUTCOMES:
                messages.add_metric([*key, outcome], getattr(consumer.stats, outcome))
            reconnects.add_metric(key, consumer.stats.reconnects)
            in_flight.add_metric(key, consumer.backlog)
        yield from (messages, reconnects, in_flight)
