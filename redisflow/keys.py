"""Every Redis key redisflow owns is built here, and nowhere else.

User-facing names (queues, priority queues, streams, channels) are the literal Redis keys.
Auxiliary keys live under the flow's prefix and carry the hash tag of the key they serve,
so a queue and everything redisflow keeps for it share one Redis Cluster slot::

    emails            -> rf:{emails}:delayed, rf:{emails}:dead, rf:{emails}:proc:<worker>:<n>
    {tenant}:emails   -> rf:{tenant}:emails:delayed ...  (the user's own tag is kept)
"""

from __future__ import annotations

from dataclasses import dataclass


def hash_tag(key: str) -> str:
    """Return the part of ``key`` that Redis Cluster hashes (its ``{tag}``, else all of it)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True, slots=True)
class Keys:
    """The auxiliary keys of one source (a queue, priority queue, stream or channel)."""

    prefix: str
    name: str

    @property
    def base(self) -> str:
        """``<prefix>:{<tag>}`` followed by the rest of the name when the user set a tag."""
        tag = hash_tag(self.name)
        if tag == self.name:
            return f"{self.prefix}:{{{tag}}}"
        return f"{self.prefix}:{self.name}"

    @property
    def delayed(self) -> str:
        """Sorted set of messages due later (retries and delayed enqueues), scored by due ms."""
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        """Dead-letter stream of this source."""
        return f"{self.base}:dead"

    @property
    def seq(self) -> str:
        """Sequence counter that orders a priority queue within one level."""
        return f"{self.base}:seq"

    @property
    def wake(self) -> str:
        """One-entry stream that producers touch to wake blocked priority consumers."""
        return f"{self.base}:wake"

    @property
    def leases(self) -> str:
        """Sorted set of live workers of a queue, scored by lease expiry (server ms)."""
        return f"{self.base}:leases"

    def batches(self, worker: str) -> str:
        """Set of the in-flight batch keys one worker holds."""
        return f"{self.base}:w:{worker}"

    def batch(self, worker: str, n: int) -> str:
        """One in-flight batch: the messages a worker took in one fetch."""
        return f"{self.base}:proc:{worker}:{n}"

    def rate(self, key: str) -> str:
        """Rate-limit state of one limiter key: a sliding log (sorted set) or a GCRA TAT."""
        return f"{self.base}:rate:{key}"

    def dedup(self, key: str) -> str:
        """Producer-side dedup marker of one ``dedup_key`` (``SET NX PX``)."""
        return f"{self.base}:dedup:{key}"

    def done(self, key: str) -> str:
        """Consumer-side idempotency record of one key: a claim while running, then done."""
        return f"{self.base}:done:{key}"

    def index(self, field: str, value: str) -> str:
        """Set of the stream entry ids whose payload has ``field == value``."""
        return f"{self.base}:idx:{field}:{value}"

    @property
    def indexes(self) -> str:
        """Set of the index keys of a stream (what ``Flow.memory`` reports)."""
        return f"{self.base}:idx"

    @property
    def counts(self) -> str:
        """Hash of message counts per status (``published``, ``<handler>:completed``...)."""
        return f"{self.base}:counts"

    @property
    def stats(self) -> str:
        """Hash of consumer counters, ``<handler>:<counter>``, summed over all workers."""
        return f"{self.base}:stats"

    @property
    def inflight(self) -> str:
        """Hash ``<handler>:<worker>`` -> ``<messages held>:<worker's clock, ms>``, refreshed
        by live workers (entries older than a few seconds belong to dead ones)."""
        return f"{self.base}:inflight"


def status_key(prefix: str, message_id: str) -> str:
    """The status record (hash) of one tracked message; its own slot, found by id alone."""
    return f"{prefix}:status:{{{message_id}}}"


def sources_key(prefix: str) -> str:
    """Set of the sources flows of this prefix consume, as ``kind|name|group``."""
    return f"{prefix}:sources"
