"""Every Redis key redisflow owns is built here, and nowhere else.

User-facing names (queues, priority queues, streams, channels) are the literal Redis keys.
Auxiliary keys live under the flow's prefix and carry the hash tag of the key they serve,
so a queue and everything redisflow keeps for it share one Redis Cluster slot::

    emails            -> rf:{emails}:delayed, rf:{emails}:dead, rf:{emails}:proc:<worker>:<n>
    {tenant}:emails   -> rf:{tenant}:15:{tenant}:emails:delayed   (the user's own tag is kept)

Each source owns its keys: for a name without a tag the tag *is* the name, and a tagged name
is written out whole behind its length, so no two names (``jobs`` and ``{jobs}``, or
``{t}:a`` and ``{t}:a:dedup``) can build the same key. Every suffix starts with a letter, so
the length of a tagged name is never confused with one (docs/design.md, "Keys").
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

SLOTS = 16384


def hash_tag(key: str) -> str:
    """The part of ``key`` that Redis Cluster hashes: its ``{tag}`` (the text between the
    first ``{`` and the first ``}`` after it, when not empty), else all of it."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC16-XMODEM of ``data``, continuing from ``crc`` (the value for what came before)."""
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16-XMODEM of its hash tag, mod 16384)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % SLOTS


def check_text(text: str, what: str) -> str:
    """``text`` if it can be sent to Redis (UTF-8), else ConfigError: a lone surrogate
    (``"\\ud800"``, from a mis-decoded file name say) has no UTF-8 form."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"the {what} {text!r} is not valid text (a lone surrogate)") from None
    return text


def check_name(name: object, what: str = "name") -> str:
    """``name`` if redisflow can keep its auxiliary keys in its slot, else ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"the {what} must be a non-empty string, got {name!r}")
    check_text(name, what)
    if "}" in name and hash_tag(name) == name:
        raise ConfigError(
            f"the {what} {name!r} has a '}}' that does not close a hash tag: its auxiliary"
            " keys could not share its cluster slot (use a tag such as '{tenant}:jobs')"
        )
    return name


def check_prefix(prefix: object) -> str:
    """``prefix`` if it is usable (non-empty, no braces, no spaces), else ConfigError."""
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} "):
        raise ConfigError(f"prefix must be non-empty, without braces or spaces: {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Keys:
    """The auxiliary keys of one source (a queue, priority queue, stream or channel)."""

    prefix: str
    name: str

    @property
    def base(self) -> str:
        """``<prefix>:{<name>}``, or ``<prefix>:{<tag>}:<length>:<name>`` for a tagged name."""
        tag = hash_tag(self.name)
        if tag == self.name:
            return f"{self.prefix}:{{{tag}}}"
        return f"{self.prefix}:{{{tag}}}:{len(self.name)}:{self.name}"

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
        return f"{self.base}:rate:{check_text(key, 'rate limit key')}"

    def dedup(self, key: str) -> str:
        """Producer-side dedup marker of one ``dedup_key`` (``SET NX PX``)."""
        return f"{self.base}:dedup:{check_text(key, 'dedup key')}"

    def done(self, key: str) -> str:
        """Consumer-side idempotency record of one key: a claim while running, then done."""
        return f"{self.base}:done:{check_text(key, 'idempotency key')}"

    def index(self, field: str, value: str) -> str:
        """Set of the stream entry ids whose payload has ``field == value``."""
        if ":" in field:
            raise ConfigError(f"an index field name cannot contain ':': {field!r}")
        return f"{self.base}:idx:{field}:{value}"

    @property
    def indexes(self) -> str:
        """Set of the index keys of a stream (what ``memory`` reports)."""
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
    def handlers(self) -> str:
        """Hash of the handlers live workers run for the source: ``<group>|<worker>`` ->
        JSON ``[identity, ms]``, refreshed every few seconds (``ops/handlers.py``)."""
        return f"{self.base}:handlers"

    @property
    def inflight(self) -> str:
        """Hash ``<handler>:<worker>`` -> ``<messages held>:<worker's clock, ms>``, refreshed
        by live workers (entries older than a few seconds belong to dead ones)."""
        return f"{self.base}:inflight"

    # -- fair groups (features/groups.py): the keys every group script takes, in order -----

    @property
    def groups(self) -> tuple[str, str, str, str, str, str, str]:
        """The keys of a fair-group queue, as every group script takes them (``KEYS[1..7]``,
        ``lua/lib_groups.lua``): the source (the default group's messages), the ring of
        groups to serve (sorted set: group -> turn), the turn counter, the named groups
        holding messages (a set), the parked groups (sorted set: group -> due ms),
        the paused groups (set) and the wake stream."""
        base = self.base
        return (
            self.name, f"{base}:gring", f"{base}:gturn", f"{base}:gheld", f"{base}:gpark",
            f"{base}:gpaused", self.wake,
        )  # fmt: skip

    def group(self, group: str) -> str:
        """The messages of one fair group (a list, or a sorted set for a priority queue):
        the source itself for the default group (``""``). ``lua/lib_groups.lua`` builds the
        same names from ``base``; every one carries the source's hash tag."""
        return f"{self.base}:g:{group}" if group else self.name

    def group_tokens(self, group: str) -> str:
        """Set of the lease tokens of one group's messages being handled (a concurrency
        limit counts them)."""
        return f"{self.base}:gi:{group}"

    def group_grants(self, group: str) -> str:
        """Sorted set of the times of one group's grants (its rate limit's sliding log)."""
        return f"{self.base}:gr:{group}"

    @property
    def cancels(self) -> str:
        """Hash of the cancelled messages of the source (this partition): id -> JSON
        ``[deadline ms, reason, group]``, swept by ``lua/cancel.lua``; expires with its last
        mark (``features/cancels.py``)."""
        return f"{self.base}:cancels"

    @property
    def cancels_version(self) -> str:
        """The version of ``cancels`` (a number that grows with each cancel), read with each
        fetch so that a worker reloads the marks only when they changed."""
        return f"{self.base}:cancelv"

    @property
    def ticks(self) -> str:
        """The internal queue (a list) of a schedule: one message per tick to run."""
        return f"{self.base}:ticks"

    @property
    def schedule(self) -> str:
        """Hash of a schedule's state: its spec, next and last tick, counts, last outcome."""
        return f"{self.base}:schedule"

    @property
    def owned(self) -> tuple[str, ...]:
        """The source and the keys of it that ``memory`` and ``stats`` measure (a
        schedule's internal queue and state included)."""
        return (self.name, self.delayed, self.dead, self.counts, self.indexes, self.ticks,
                self.schedule)  # fmt: skip


def status_key(prefix: str, message_id: str) -> str:
    """The status record (hash) of one tracked message; its own slot, found by id alone."""
    return f"{prefix}:status:{{{message_id}}}"


def result_key(prefix: str, result_id: str) -> str:
    """The result record of one message (a string that expires): in the slot of its id, so
    it is found by the id alone; ``reply_channel`` shares it (docs/design.md, "Results")."""
    return f"{prefix}:result:{{{check_text(result_id, 'result id')}}}"


def reply_channel(prefix: str, result_id: str) -> str:
    """The sharded Pub/Sub channel a result is pushed on, in its record's slot."""
    return f"{prefix}:reply:{{{check_text(result_id, 'result id')}}}"


def sources_key(prefix: str) -> str:
    """Set of the sources flows of this prefix consume, as ``kind|name|group``."""
    return f"{prefix}:sources"


def grouped_key(prefix: str) -> str:
    """Set of the queue names consumed in fair groups (producers send a message without a
    group to the default group through the group script, which wakes the consumers)."""
    return f"{prefix}:grouped"


def layouts_key(prefix: str) -> str:
    """Hash of the partition layouts in use: source name -> JSON list of partition counts,
    current first (``partitions.py``)."""
    return f"{prefix}:partitions"


def paused_key(prefix: str) -> str:
    """Hash of the paused sources of the prefix: JSON ``[name, group]`` -> when paused, ms
    (``features/pauses.py``)."""
    return f"{prefix}:paused"
