"""A local Redis Cluster of private redis-server processes, built with plain commands.

No ``redis-cli --cluster``: the nodes are joined with ``CLUSTER ADDSLOTSRANGE``,
``CLUSTER MEET`` and ``CLUSTER REPLICATE``, so a server binary shipped without redis-cli
works too, and resharding (``CLUSTER SETSLOT`` + ``MIGRATE``) and failovers are real.

Usage::

    cluster = RedisCluster.start(masters=3, replicas=1)
    try:
        slot = cluster.slot_of("user:{42}")
        cluster.move_slots([slot], cluster.masters()[1])
        cluster.failover(cluster.replicas()[0])
    finally:
        cluster.stop()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self
from urllib.parse import urlsplit

from ..keys import SLOTS
from ..keys import slot as slot_of
from .servers import RedisServer

__all__ = ["SLOTS", "ClusterNode", "RedisCluster", "slot_of"]

MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 5000


@dataclass(eq=False)
class ClusterNode(RedisServer):
    """A redis-server in cluster mode; ``node_id`` is its cluster node ID, which it keeps
    across restarts (it is stored in ``nodes.conf`` in its data dir)."""

    node_id: str = ""


@dataclass(frozen=True)
class _Seen:
    """One line of ``CLUSTER NODES``: a node as the node asked sees it."""

    node_id: str
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, line: str) -> _Seen:
        # <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        node_id, _, flags, master, *rest = line.split()
        slots = []
        for item in rest[4:]:
            if item.startswith("["):  # "[slot->-id]" / "[slot-<-id]": a migration in progress
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        master_id = None if master == "-" else master
        return cls(node_id, frozenset(flags.split(",")), master_id, tuple(slots))

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _reachable(node: RedisServer) -> bool:
    return node.proc is None or node.running  # an external node is assumed up


@dataclass(eq=False)
class RedisCluster:
    """A local Redis Cluster (or an existing one, see :meth:`external`)."""

    nodes: list[ClusterNode] = field(default_factory=list)
    node_timeout_ms: int = 2000
    _migrations: dict[int, tuple[ClusterNode, ClusterNode]] = field(default_factory=dict)

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> Self:
        """Start ``masters * (1 + replicas)`` nodes, give the masters contiguous slot
        ranges, join them, attach ``replicas`` replicas to each master, and wait until the
        cluster is ok (see :meth:`wait_ok`)."""
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and replicas >= 0")
        cluster = cls(node_timeout_ms=node_timeout_ms)
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            *extra_args,
        ]  # fmt: skip
        try:
            for _ in range(masters * (1 + replicas)):
                node = ClusterNode.start(args)  # picks a port whose bus port is free too
                cluster.nodes.append(node)
                node.node_id = node.call("CLUSTER", "MYID")
            cluster._join(masters, timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _join(self, masters: int, timeout: float) -> None:
        primaries = self.nodes[:masters]
        for i, node in enumerate(primaries):
            # Distinct config epochs up front, as redis-cli does: otherwise every master
            # starts at epoch 0 and the collision-resolution rounds delay convergence.
            node.call("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            lo, hi = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
            node.call("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node in self.nodes[1:]:
            self.nodes[0].call("CLUSTER", "MEET", node.host, node.port)
        # CLUSTER REPLICATE fails with "Unknown node" until the gossip reached the replica.
        self._wait(timeout, "every node knows every other node", self._meshed)
        for i, node in enumerate(self.nodes[masters:]):
            node.call("CLUSTER", "REPLICATE", primaries[i % masters].node_id)
        self.wait_ok(timeout)

    @classmethod
    def external(cls, url: str) -> Self:
        """An existing cluster (``redis+cluster://h:p,h:p/`` or ``redis://h:p/0`` of any
        node): its nodes are discovered with ``CLUSTER NODES``; nothing is started, and
        :meth:`stop`, :meth:`kill` and :meth:`restart` do nothing to it."""
        hosts = urlsplit(url).netloc.rpartition("@")[2].split(",")
        host, _, port = hosts[0].partition(":")
        seed = ClusterNode.external(f"redis://{host}:{port or 6379}/0")
        cluster = cls()
        text = seed.call("CLUSTER", "NODES")
        for line in text.splitlines():
            addr = line.split()[1].split("@")[0]
            node_host, _, node_port = addr.rpartition(":")
            node = ClusterNode.external(f"redis://{node_host or host}:{node_port}/0")
            node.node_id = line.split()[0]
            cluster.nodes.append(node)
        return cluster

    # -- addresses -----------------------------------------------------------------------

    @property
    def seed_url(self) -> str:
        """``redis://127.0.0.1:P/0`` of the first node, enough for a cluster client."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        """The ``redis://`` URL of every node."""
        return [node.url for node in self.nodes]

    @property
    def cluster_url(self) -> str:
        """``redis+cluster://h:p,h:p,.../`` listing every node."""
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes) + "/"

    # -- the cluster's view --------------------------------------------------------------

    def _view(self, node: ClusterNode | None = None) -> list[_Seen]:
        node = node or next(n for n in self.nodes if _reachable(n))
        return [_Seen.parse(line) for line in node.call("CLUSTER", "NODES").splitlines()]

    def _node(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def masters(self) -> list[ClusterNode]:
        """The masters as the cluster sees them now (not failed), by their first slot."""
        seen = [s for s in self._view() if "master" in s.flags and "fail" not in s.flags]
        seen.sort(key=lambda s: s.slots[0][0] if s.slots else SLOTS)
        return [self._node(s.node_id) for s in seen]

    def replicas(self, of: ClusterNode | None = None) -> list[ClusterNode]:
        """The replicas as the cluster sees them now (not failed), optionally of one
        master only."""
        return [
            self._node(s.node_id)
            for s in self._view()
            if "slave" in s.flags
            and "fail" not in s.flags
            and (of is None or s.master_id == of.node_id)
        ]

    @staticmethod
    def slot_of(key: str | bytes) -> int:
        """The hash slot of ``key`` (pure Python, hash-tag aware)."""
        return slot_of(key)

    def owner(self, slot: int, asked: ClusterNode | None = None) -> ClusterNode:
        """The master serving ``slot`` now (the source, while a migration is under way), as
        ``asked`` sees it (default: the first running node)."""
        for seen in self._view(asked):
            if "master" in seen.flags and any(lo <= slot <= hi for lo, hi in seen.slots):
                return self._node(seen.node_id)
        raise LookupError(f"no node serves slot {slot}")

    # -- resharding ----------------------------------------------------------------------

    def begin_migration(
        self, slot: int, to_node: ClusterNode, keys: Iterable[str | bytes] = ()
    ) -> None:
        """Start moving ``slot`` to ``to_node`` and leave it half-migrated: the target is
        IMPORTING, the source MIGRATING, and only ``keys`` (of that slot) moved so far.

        Meanwhile the source answers ``ASK`` for a key it no longer has, and ``TRYAGAIN``
        for a multi-key command over a key it has and one that moved.
        """
        source = self.owner(slot)
        if source is to_node:
            raise ValueError(f"slot {slot} is already served by {to_node.url}")
        moving = list(keys)
        wrong = [k for k in moving if slot_of(k) != slot]
        if wrong:
            raise ValueError(f"keys {wrong!r} are not in slot {slot}")
        # The target must accept ASKING before the source starts redirecting to it.
        to_node.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", to_node.node_id)
        self._migrations[slot] = (source, to_node)
        if moving:
            self._migrate(source, to_node, moving)

    def finish_migration(self, slot: int) -> None:
        """Move the keys left in a slot started with :meth:`begin_migration` and hand the
        slot over: ``SETSLOT NODE`` on the target, the source, then the other masters."""
        source, target = self._migrations.pop(slot)
        # Keys as bytes: a key need not be valid UTF-8.
        while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH, decode=False):
            self._migrate(source, target, keys)
        # The target first: it bumps its config epoch on taking the slot, so its claim wins
        # over any stale one gossiped by the source.
        target.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        source.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for node in self.masters():
            if node is not source and node is not target and _reachable(node):
                node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    @staticmethod
    def _migrate(source: ClusterNode, target: ClusterNode, keys: Sequence[str | bytes]) -> None:
        # MIGRATE host port "" db timeout KEYS k...: the empty key selects the KEYS form.
        source.call("MIGRATE", target.host, target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys)

    def move_slots(self, slots: Iterable[int], to_node: ClusterNode, timeout: float = 30) -> None:
        """Reshard: move every slot of ``slots`` (and its keys) to ``to_node``, then wait
        until every node agrees."""
        for slot in slots:
            if self.owner(slot) is not to_node:
                self.begin_migration(slot, to_node)
                self.finish_migration(slot)
        self.wait_ok(timeout)

    # -- failures ------------------------------------------------------------------------

    def failover(
        self,
        replica: ClusterNode,
        mode: Literal["FORCE", "TAKEOVER"] | None = None,
        timeout: float = 30,
    ) -> float:
        """``CLUSTER FAILOVER [mode]`` on ``replica``; wait until it is a master and the
        cluster is ok. Returns the seconds it took."""
        began = time.monotonic()
        replica.call("CLUSTER", "FAILOVER", *([mode] if mode else []))
        self._wait(timeout, f"{replica.url} becomes a master", lambda: _role(replica) == "master")
        self.wait_ok(max(1.0, timeout - (time.monotonic() - began)))
        return time.monotonic() - began

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node`` (a crash); its data dir and ``nodes.conf`` stay for a restart."""
        node.kill()

    def restart(self, node: ClusterNode, timeout: float = 30) -> None:
        """Start ``node`` again on its port and dir and wait until the cluster is ok (a
        master whose replica took over comes back as a replica of it)."""
        node.restart()
        self.wait_ok(timeout)

    # -- health --------------------------------------------------------------------------

    def _meshed(self) -> bool:
        for node in self.nodes:
            if _reachable(node):
                seen = self._view(node)
                if len(seen) != len(self.nodes) or any(s.failed for s in seen):
                    return False
        return True

    def _healthy(self) -> bool:
        shapes = set()
        for node in self.nodes:
            if not _reachable(node):
                continue
            info = dict(
                line.split(":", 1) for line in node.call("CLUSTER", "INFO").split() if ":" in line
            )
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(len(self.nodes))
            ):
                return False
            # Every node must agree on who serves what and who replicates whom: a node
            # that has not heard of a failover yet still redirects clients to the old master.
            shapes.add(frozenset((s.node_id, s.master_id, s.slots) for s in self._view(node)
                                 if not s.failed))  # fmt: skip
            role = node.call("ROLE")
            if role[0] == "slave" and role[3] != "connected":  # master_link_status:up
                return False
        return len(shapes) == 1

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every reachable node reports ``cluster_state:ok``, all 16384 slots
        served, every node known to every node, one agreed topology, and every replica's
        link to its master up."""
        self._wait(timeout, "the cluster is ok", self._healthy)

    def _wait(self, timeout: float, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception as e:  # a node still loading, a connection refused
                last = e
            time.sleep(0.05)
        tails = "\n".join(f"--- {n.url}\n{n.log_tail(8)}" for n in self.nodes)
        raise TimeoutError(f"not true within {timeout}s: {what} (last error {last!r})\n{tails}")

    def stop(self) -> None:
        """Stop every node this object started (by PID) and remove their dirs. Idempotent."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _role(node: ClusterNode) -> str:
    role: str = node.call("ROLE")[0]
    return role
