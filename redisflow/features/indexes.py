"""Secondary indexes of streams: find entries by the value of a payload field.

``append(..., index=("event_type", "entity_id"))`` adds the entry id to one set per indexed
field value (``Keys.index``), in the same script as the XADD, and registers the set in the
stream's set of index keys (``Keys.indexes``). ``find`` intersects the sets and returns the
entries in stream order in one call (``lua/find.lua``), dropping the ids of trimmed
entries; ``prune`` removes them all (run every 1,000 trimming indexed appends per process).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import TypeAdapter

from ..errors import ConfigError
from ..keys import Keys
from ..protocol import envelope, scripts

if TYPE_CHECKING:
    from ..connection import Connector

_PRUNE_EVERY = itertools.cycle(range(1000))  # 0 once per 1,000 trimming indexed appends


def _value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class StreamIndexes:
    """The indexes of the streams of one prefix."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.prefix = prefix

    def keys_of(self, stream: str, data: Any, fields: Sequence[str]) -> list[str]:
        """The index sets an entry with payload ``data`` joins for ``fields``."""
        if not fields:
            return []
        if isinstance(fields, str):
            raise ConfigError(f"index must be a sequence of field names, not {fields!r}")
        values = orjson.loads(envelope.encode(data))
        if not isinstance(values, dict):
            raise ConfigError("index needs a payload that is a JSON object")
        keys = Keys(self.prefix, stream)
        found = []
        for name in fields:
            if name not in values or isinstance(values[name], dict | list):
                raise ConfigError(f"index field {name!r} is missing or not a scalar")
            found.append(keys.index(name, _value(values[name])))
        return found

    async def find(
        self,
        stream: str,
        limit: int,
        newest_first: bool,
        model: Any,
        criteria: Mapping[str, Any],
    ) -> list[tuple[str, Any]]:
        """The entries whose fields equal ``criteria`` (see ``Client.find``)."""
        if not criteria:
            raise ConfigError("find needs at least one field=value criterion")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be an int >= 1, got {limit!r}")
        keys = Keys(self.prefix, stream)
        index = [keys.index(name, _value(value)) for name, value in criteria.items()]
        entries = await self.connector.run(scripts.find(stream, index, limit, newest_first))
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        found = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            found.append((entry_id.decode(), adapter.validate_json(fields.get(b"data", b"null"))))
        return found

    async def prune(self, stream: str) -> int:
        """Remove the index entries of ``stream`` whose entries were trimmed; how many."""
        keys = Keys(self.prefix, stream)
        members = await self.connector.send("SMEMBERS", keys.indexes)
        call = scripts.prune_index(stream, keys.indexes, [key.decode() for key in members])
        removed: int = await self.connector.run(call)
        return removed

    async def trimmed(self, stream: str) -> None:
        """Note an indexed append that trimmed ``stream``: prune once per 1,000."""
        if not next(_PRUNE_EVERY):
            await self.prune(stream)
