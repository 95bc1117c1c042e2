"""Redis Cluster: the slot map, every command routed to the node that owns its key, and the
redirections and faults of a cluster followed.

``Router`` has the interface of a ``Pipeliner`` (``send(*args)``, ``many``, ``each``) and
keeps one ``Pipeliner`` per node, so concurrent calls still share round trips, per node. The
slot map comes from ``CLUSTER SHARDS`` (Redis 7.0) and slots are computed locally
(``keys.slot``). A reply tells what to do next (docs/design.md, "Cluster"):

- ``MOVED <slot> <host:port>``: the slot has a new owner; the map is updated and the
  command sent there;
- ``ASK <slot> <host:port>``: the slot is being migrated and this key already left; the
  command is sent there once, after ``ASKING`` on the same connection;
- ``TRYAGAIN`` (a multi-key command over a slot half migrated), ``CLUSTERDOWN`` (slots
  without a live owner during a failover), a node that does not answer: wait (backoff),
  reload the map, and send again, for up to ``retry_for`` seconds.

A command is sent again only when it certainly did not run (a redirection) or when its
connection was lost (then it may have run: at-least-once, as on one server).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ConnectionLost, ReplyError
from ..keys import SLOTS, slot
from .link import Link
from .pipeliner import Pipeliner, Wait, Waiting
from .url import Address, Endpoint, ServerSpec

log = logging.getLogger("redisflow")

REDIRECTS = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
#: Commands whose key is not their first argument (the default), or that have none.
_KEY_AT: dict[bytes, int | None] = {
    b"EVALSHA": 3, b"EVAL": 3, b"XINFO": 2, b"XGROUP": 2, b"MEMORY": 2, b"OBJECT": 2,
    b"BLMPOP": 3, b"LMPOP": 2, b"PING": None, b"INFO": None, b"SCRIPT": None,
    b"CLIENT": None, b"CONFIG": None, b"CLUSTER": None, b"ASKING": None, b"TIME": None,
    b"ROLE": None, b"WAIT": None,
}  # fmt: skip


def key_of(args: Sequence[Any]) -> Any:
    """The key that decides where a command goes (None: any node will do)."""
    name = args[0]
    name = (name.encode() if isinstance(name, str) else name).upper()
    if name in (b"XREADGROUP", b"XREAD"):
        for i, arg in enumerate(args):
            if arg in ("STREAMS", b"STREAMS"):
                return args[i + 1]
        return None
    at = _KEY_AT.get(name, 1)
    if at is None or len(args) <= at:
        return None
    if name in (b"EVALSHA", b"EVAL") and args[2] in (0, "0", b"0"):
        return None
    return args[at]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SlotMap:
    """Which node owns each of the 16384 slots, and the replicas of each owner."""

    def __init__(self) -> None:
        self.owners: list[Address | None] = [None] * SLOTS
        self.replicas: dict[Address, list[Address]] = {}

    @property
    def ready(self) -> bool:
        """Whether a map was loaded."""
        return self.owners[0] is not None or any(self.owners)

    @property
    def masters(self) -> list[Address]:
        """The nodes that own slots."""
        return list(dict.fromkeys(owner for owner in self.owners if owner is not None))

    def load(self, shards: list[Any], tls: bool, asked: Address) -> None:
        """Load a ``CLUSTER SHARDS`` reply (RESP2) of the node at ``asked`` (a node that
        never met another does not know its own address: it reports none)."""
        owners: list[Address | None] = [None] * SLOTS
        replicas: dict[Address, list[Address]] = {}
        for flat in shards:
            shard: dict[bytes, Any] = dict(zip(flat[::2], flat[1::2], strict=True))
            ranges = shard[b"slots"]
            master: Address | None = None
            copies: list[Address] = []
            for node_flat in shard[b"nodes"]:
                node: dict[bytes, Any] = dict(zip(node_flat[::2], node_flat[1::2], strict=True))
                host = _text(node.get(b"endpoint") or node.get(b"ip") or b"")
                if host in ("", "?"):
                    host = _text(node.get(b"ip") or b"") or asked.host
                port: Any = (
                    node.get(b"tls-port") if tls and node.get(b"tls-port") else node[b"port"]
                )
                address = Address(host, int(port))
                if node.get(b"role") == b"master" and node.get(b"health") != b"fail":
                    master = address
                elif node.get(b"health") == b"online":
                    copies.append(address)
            if master is None:
                continue
            replicas[master] = copies
            for i in range(0, len(ranges), 2):
                for s in range(int(ranges[i]), int(ranges[i + 1]) + 1):
                    owners[s] = master
        if not any(owners):
            raise ConnectionLost("the cluster reported no slot owner")
        self.owners, self.replicas = owners, replicas

    def owner(self, slot_: int) -> Address | None:
        """The node that owns ``slot_``."""
        return self.owners[slot_]


class Router:
    """Commands of one process, each sent to the node that owns its key."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        name: str = "redisflow",
        timeout: float = 10.0,
        retry_for: float = 10.0,
    ) -> None:
        self.spec, self.name, self.timeout, self.retry_for = spec, name, timeout, retry_for
        self.map = SlotMap()
        self.seeds = list(spec.addresses)
        self.nodes: dict[Address, Pipeliner] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self.closed = False

    # -- the map --------------------------------------------------------------------------

    def endpoint(self, address: Address) -> Endpoint:
        """How to connect to the node at ``address``."""
        return self.spec.endpoint(address)

    async def refresh(self) -> None:
        """Load the slot map again (one load at a time; callers that arrive meanwhile wait
        for it). Raises ConnectionLost when no known node answers."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        fut = self._refreshing = asyncio.get_running_loop().create_future()
        try:
            await self._load()
            fut.set_result(None)
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            self._refreshing = None
            if not fut.cancelled() and fut.exception() is not None:
                fut.exception()  # retrieved: no "never retrieved" warning

    async def _load(self) -> None:
        candidates = list(dict.fromkeys([*self.map.masters, *self.seeds]))
        random.shuffle(candidates)
        failure: BaseException | None = None
        for address in candidates:
            link = Link(self.endpoint(address), name=f"{self.name}:map")
            try:
                await link.open()
                shards = await link.call("CLUSTER", "SHARDS")
                self.map.load(shards, self.spec.tls is not None, address)
                self.seeds = list(dict.fromkeys([*self.seeds, *self.map.masters]))
                return
            except (ConnectionLost, OSError, ReplyError) as exc:
                failure = exc
            finally:
                await link.close()
        raise ConnectionLost(f"no node of the cluster answered ({failure})")

    async def endpoint_for(self, key: str | bytes) -> Endpoint:
        """The node that owns ``key`` now (for a fetch loop's dedicated link)."""
        if not self.map.ready:
            await self.refresh()
        owner = self.map.owner(slot(key))
        if owner is None:
            await self.refresh()
            owner = self.map.owner(slot(key))
            if owner is None:
                raise ConnectionLost(f"no node owns the slot of {key!r}")
        return self.endpoint(owner)

    def follow(self, error: ReplyError) -> bool:
        """Learn from a redirection a dedicated link got (``MOVED``); True if it was one."""
        if error.code == "MOVED":
            parts = str(error).split()
            host, _, port = parts[2].rpartition(":")
            self.map.owners[int(parts[1])] = Address(host or self.seeds[0].host, int(port))
            return True
        return error.code in REDIRECTS

    def node(self, address: Address) -> Pipeliner:
        """The auto-pipelined connections to one node."""
        pipeliner = self.nodes.get(address)
        if pipeliner is None:
            endpoint = self.endpoint(address)
            pipeliner = self.nodes[address] = Pipeliner(
                lambda: Link(endpoint, name=f"{self.name}:send"),
                retry_for=0.3,  # a dead node: reload the map soon, rather than insist
                timeout=self.timeout,
            )
        return pipeliner

    # -- sending --------------------------------------------------------------------------

    async def __call__(self, *args: Any) -> Any:
        """Send one command to the node of its key; its reply (an error reply is raised)."""
        return (await self._send((args,), raw=False))[0]

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send commands, each to the node of its key (in order per node); their replies.
        The first error reply is raised (after all have run)."""
        return await self._send(commands, raw=False)

    async def submit(
        self, commands: Sequence[Sequence[Any]], raw: bool = False, wait: Wait | None = None
    ) -> list[Any]:
        """Send ``commands`` (each to its node); ``wait``: acknowledged by that many
        replicas of each node written to."""
        return await self._send(commands, raw=raw, wait=wait)

    def waiting(self, wait: Wait) -> Waiting:
        """This router, with every call acknowledged by ``wait`` replicas."""
        return Waiting(self, wait)

    async def on_node(self, address: Address, *args: Any) -> Any:
        """Send one command to the node at ``address`` (``CLIENT UNBLOCK``...)."""
        return await self.node(address)(*args)

    async def on_masters(self, *args: Any) -> list[Any]:
        """Send one command to every master; their replies."""
        if not self.map.ready:
            await self.refresh()
        masters = self.map.masters
        return list(await asyncio.gather(*(self.node(m)(*args) for m in masters)))

    def where(self, key: str | bytes | None) -> Address:
        """The node a command on ``key`` goes to (any master for no key)."""
        owner = self.map.owner(slot(key)) if key is not None else None
        return owner or random.choice(self.map.masters)

    async def _send(
        self, commands: Sequence[Sequence[Any]], raw: bool, wait: Wait | None = None
    ) -> list[Any]:
        if self.closed:
            raise ConnectionLost("the flow's connections are closed")
        if not self.map.ready:
            await self.refresh()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, Address] = {}
        delay = 0.02
        while True:
            pending, pause, failure = await self._round(commands, pending, asking, results, wait)
            if not pending:
                break
            if loop.time() + delay > deadline:
                raise failure
            if pause:
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(0.5, delay * 2)
                try:
                    await self.refresh()
                except ConnectionLost as exc:
                    failure = exc
        if not raw:
            for reply in results:
                if isinstance(reply, ReplyError):
                    raise reply
        return results

    async def _round(
        self,
        commands: Sequence[Sequence[Any]],
        pending: list[int],
        asking: dict[int, Address],
        results: list[Any],
        wait: Wait | None = None,
    ) -> tuple[list[int], bool, BaseException]:
        """Send ``pending`` once; what to send again, whether to wait first, and why."""
        groups: dict[Address, list[int]] = {}
        asked: list[int] = []
        for i in pending:
            if i in asking:
                asked.append(i)
            else:
                groups.setdefault(self.where(key_of(commands[i])), []).append(i)
        calls = [
            self.node(a).submit([commands[i] for i in idx], True, wait) for a, idx in groups.items()
        ]
        calls += [
            self.node(asking[i]).submit([("ASKING",), commands[i]], True, wait) for i in asked
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        batches = [*groups.values(), *([i] for i in asked)]
        again: list[int] = []
        pause, failure = False, BaseException()
        for idx, outcome, was_asked in zip(
            batches, outcomes, [False] * len(groups) + [True] * len(asked), strict=True
        ):
            if isinstance(outcome, (ConnectionLost, OSError)):
                again += idx
                pause, failure = True, outcome
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            replies = outcome[1:] if was_asked else outcome
            for i, reply in zip(idx, replies, strict=True):
                asking.pop(i, None)
                if isinstance(reply, ReplyError) and reply.code in REDIRECTS:
                    again.append(i)
                    failure = reply
                    if reply.code == "ASK":
                        host, _, port = str(reply).split()[2].rpartition(":")
                        asking[i] = Address(host or self.seeds[0].host, int(port))
                    elif reply.code == "MOVED":
                        self.follow(reply)
                    else:  # TRYAGAIN, CLUSTERDOWN: wait for the cluster to settle
                        pause = True
                else:
                    results[i] = reply
        return again, pause, failure

    def forsake(self) -> None:
        """Drop every node's connections without their event loop, which has ended."""
        self.closed = True
        for pipeliner in self.nodes.values():
            pipeliner.forsake()

    async def aclose(self) -> None:
        """Close every node's connections."""
        self.closed = True
        for pipeliner in self.nodes.values():
            await pipeliner.aclose()


class RoutedLink(Link):
    """A dedicated link to whichever node owns ``key`` when it opens (a fetch loop whose
    slot moved reconnects, and so follows its key)."""

    def __init__(self, router: Router, key: str | bytes, *, name: str | None = None) -> None:
        super().__init__(router.endpoint(router.seeds[0]), name=name)
        self.router, self.key = router, key

    async def open(self, scripts: Iterable[Any] = ()) -> None:
        self.endpoint = await self.router.endpoint_for(self.key)
        await super().open(scripts)
