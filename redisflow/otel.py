"""OpenTelemetry tracing (the otel extra, ``pip install opentelemetry-api``):
``Flow(middleware=[Tracing()])``.

``Tracing`` is a middleware (``middleware.py``) that follows the OpenTelemetry messaging
semantic conventions:

- a PRODUCER span ``send <name>`` around each send (one per ``*_many`` call, with
  ``messaging.batch.message_count``), whose context travels in the message's headers as
  the W3C ``traceparent`` (the flow's propagator: ``opentelemetry.propagate``);
- a CONSUMER span ``process <name>`` around each handler attempt, child of the context the
  message carries (a new trace when it carries none: a message of another client, a
  channel message without ``Flow(channel_headers=True)``), with the attempt number
  (``redisflow.message.attempt``), what became of it (``redisflow.outcome``: ok, retry,
  dead-lettered, rejected, skipped, deferred; cancelled by a stop) and the exception of a
  failed attempt;
- for a batch handler, one CONSUMER span ``process <name>`` per batch (a new trace), with
  ``messaging.batch.message_count`` and a link to the context each message carries (the
  batch-receiving form of the conventions); ``redisflow.outcome`` is ``partial`` when
  ``BatchFailed`` named some messages (``redisflow.batch.failed_count`` of them).

A retry written by the framework keeps its headers, so every attempt stays in the
producer's trace; a dead-letter replay is a new PRODUCER span, linked to the trace the
letter came from. Register it first (outermost): it then sees what the other middleware
raise, and its span covers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .consumers.verdicts import Outcome, outcome
from .errors import BatchFailed, ConfigError
from .message import MessageBatch
from .middleware import Middleware

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from .message import Message
    from .middleware import ConsumeNext, Outgoing, ProduceNext

# Attribute names and values of the messaging semantic conventions (status: Development,
# opentelemetry-semantic-conventions' ``messaging_attributes`` and ``error_attributes``;
# tests/test_otel.py checks each against the installed package). Ours are ``redisflow.*``.
SYSTEM: Final = "messaging.system"
DESTINATION: Final = "messaging.destination.name"
TEMPLATE: Final = "messaging.destination.template"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
MESSAGE_ID: Final = "messaging.message.id"
BATCH_COUNT: Final = "messaging.batch.message_count"
GROUP: Final = "messaging.consumer.group.name"
ERROR_TYPE: Final = "error.type"
SEND: Final = "send"  # MessagingOperationTypeValues.SEND
PROCESS: Final = "process"  # MessagingOperationTypeValues.PROCESS
REDIS: Final = "redis"  # not among MessagingSystemValues: the conventions allow others
KIND: Final = "redisflow.kind"  # channel, queue, priority, stream
REASON: Final = "redisflow.reason"  # "replay": a dead letter sent back (retries: no span)
ATTEMPT: Final = "redisflow.message.attempt"
OUTCOME: Final = "redisflow.outcome"
BATCH_FAILED: Final = "redisflow.batch.failed_count"
FAILED: frozenset[Outcome] = frozenset({"retry", "dead-lettered", "rejected"})


class Tracing(Middleware):
    """Spans for every send and handler attempt (module docstring), on ``tracer_provider``
    (default: the global one, also when it is set after the flow is built)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            raise ConfigError(
                "Tracing needs opentelemetry-api: pip install opentelemetry-api (the otel extra)"
            ) from None
        from . import __version__

        self._tracer = trace.get_tracer("redisflow", __version__, tracer_provider)
        self._context, self._propagate, self._trace = context, propagate, trace
        self._producer, self._consumer = trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER

    async def produce(self, out: Outgoing, call_next: ProduceNext) -> Any:
        """A PRODUCER span around the send, its context written into ``out.headers``."""
        if out.reason == "retry":  # its headers carry the producer's context: keep them
            return await call_next(out)
        trace, headers = self._trace, out.headers
        attributes: dict[str, Any] = {
            SYSTEM: REDIS, DESTINATION: out.name, OPERATION_TYPE: SEND, OPERATION_NAME: SEND,
            KIND: out.kind,
        }  # fmt: skip
        links = None
        if out.many:
            attributes[BATCH_COUNT] = len(out.payload)
        if out.reason == "replay":  # a new trace, linked to the one the letter came from
            attributes[REASON] = "replay"
            if out.id is not None and out.kind != "stream":  # a stream entry gets a new id
                attributes[MESSAGE_ID] = out.id
            came = trace.get_current_span(self._propagate.extract(headers)).get_span_context()
            links = [trace.Link(came)] if came.is_valid else None
            for name in self._propagate.get_global_textmap().fields:
                headers.pop(name, None)
        span = self._tracer.start_span(
            f"send {out.name}", kind=self._producer, attributes=attributes, links=links
        )
        ctx = trace.set_span_in_context(span)
        token = self._context.attach(ctx)
        try:
            self._propagate.inject(headers, ctx)
            result = await call_next(out)
        except BaseException as exc:
            self._failed(span, exc)
            raise
        else:
            if isinstance(result, str):  # a message id or an entry id (not a dedup's None)
                span.set_attribute(MESSAGE_ID, result)
            return result
        finally:
            self._context.detach(token)
            span.end()

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """A CONSUMER span around the attempt, child of the context the message carries."""
        source = msg.source
        attributes: dict[str, Any] = {
            SYSTEM: REDIS, DESTINATION: source.name, OPERATION_TYPE: PROCESS,
            OPERATION_NAME: PROCESS, KIND: source.kind, MESSAGE_ID: msg.id,
            ATTEMPT: msg.attempt,
        }  # fmt: skip
        if source.group is not None:
            attributes[GROUP] = source.group
        if isinstance(msg, MessageBatch):
            return await self._consume_batch(msg, call_next, attributes)
        if msg.channel is not None and msg.channel != source.name:
            # a pattern's message: name the channel it came from, and the pattern
            attributes[DESTINATION], attributes[TEMPLATE] = msg.channel, source.name
        parent = self._propagate.extract(msg.headers)  # a new trace when it carries none
        span = self._tracer.start_span(f"process {source.name}", parent, self._consumer, attributes)
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        result: Outcome | str = "ok"
        try:
            return await call_next(msg)
        except Exception as exc:
            result = outcome(exc, msg.attempt, msg.max_attempts)
            if result in FAILED:
                self._failed(span, exc)
            raise
        except BaseException:  # a stop after the grace period: the message is handed back
            result = "cancelled"
            raise
        finally:
            span.set_attribute(OUTCOME, result)
            self._context.detach(token)
            span.end()

    async def _consume_batch(
        self, batch: MessageBatch[Any], call_next: ConsumeNext, attributes: dict[str, Any]
    ) -> Any:
        """One CONSUMER span for the batch, linked to each message's context."""
        trace = self._trace
        del attributes[MESSAGE_ID]
        attributes[BATCH_COUNT] = len(batch)
        links = []
        for msg in batch.messages:
            came = trace.get_current_span(self._propagate.extract(msg.headers))
            if (context := came.get_span_context()).is_valid:
                links.append(trace.Link(context, {MESSAGE_ID: msg.id}))
        span = self._tracer.start_span(
            f"process {batch.source.name}", self._context.Context(), self._consumer,
            attributes, links,
        )  # fmt: skip
        token = self._context.attach(trace.set_span_in_context(span))
        result: str = "ok"
        try:
            return await call_next(batch)
        except BatchFailed as exc:
            result = "partial"
            span.set_attribute(BATCH_FAILED, len(exc.resolved) or len(exc.failures))
            raise
        except Exception as exc:
            result = outcome(exc, batch.attempt, batch.max_attempts)
            if result in FAILED:
                self._failed(span, exc)
            raise
        except BaseException:
            result = "cancelled"
            raise
        finally:
            span.set_attribute(OUTCOME, result)
            self._context.detach(token)
            span.end()

    def _failed(self, span: Span, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
        span.set_status(
            self._trace.Status(self._trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        )
