"""A local Redis Sentinel setup: one primary, its replicas and a few sentinels.

Usage::

    setup = SentinelSetup.start(replicas=2)
    try:
        old = setup.primary()
        new = setup.failover()            # SENTINEL FAILOVER, waits for the new primary
        setup.kill_primary()              # SIGKILL: the sentinels elect another one
        setup.wait_primary_change(new)
    finally:
        setup.stop()
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .servers import HOST, RedisServer

__all__ = ["SentinelSetup"]


def _sentinel_config(service: str, port: int, quorum: int, down_ms: int, timeout_ms: int) -> str:
    # Addresses are IPs on purpose: sentinel only accepts hostnames with
    # `sentinel resolve-hostnames yes`, and all processes share 127.0.0.1, so no
    # announce-ip is needed either.
    return (
        f"sentinel monitor {service} {HOST} {port} {quorum}\n"
        f"sentinel down-after-milliseconds {service} {down_ms}\n"
        f"sentinel failover-timeout {service} {timeout_ms}\n"
        f"sentinel parallel-syncs {service} 1\n"
    )


@dataclass(eq=False)
class SentinelSetup:
    """A primary, its replicas (``servers``, the primary first at start) and sentinels
    monitoring it as ``service``; every process is private and stopped by PID."""

    service: str
    quorum: int
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisServer] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "mymaster",
        quorum: int | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        timeout: float = 30.0,
    ) -> Self:
        """Start the primary, ``replicas`` replicas, then ``sentinels`` sentinels (quorum: a
        majority by default), and wait until every sentinel knows the primary, every
        replica and every other sentinel."""
        setup = cls(service, quorum if quorum is not None else sentinels // 2 + 1)
        try:
            primary = RedisServer.start()
            setup.servers.append(primary)
            for _ in range(replicas):
                setup.servers.append(RedisServer.start(["--replicaof", HOST, str(primary.port)]))
            # Sentinels learn the replicas from the primary's INFO, which they read only every
            # 10 s: start them once the replicas are attached, so the first INFO lists them.
            setup._wait(timeout, "the replicas are in sync", setup._replicas_synced)
            for _ in range(sentinels):
                config = _sentinel_config(
                    service, primary.port, setup.quorum, down_after_ms, failover_timeout_ms
                )
                setup.sentinels.append(_start_sentinel(config))
            setup._wait(timeout, "the sentinels know everyone", setup._sentinels_ready)
        except BaseException:
            setup.stop()
            raise
        return setup

    # -- addresses -----------------------------------------------------------------------

    @property
    def sentinel_addrs(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel."""
        return [(s.host, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://h:p,h:p,h:p/<service>/0``."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addrs)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # -- the sentinels' view -------------------------------------------------------------

    def _live_sentinels(self) -> list[RedisServer]:
        return [s for s in self.sentinels if s.running]

    def _reported(self, sentinel: RedisServer) -> RedisServer | None:
        reply = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not reply:
            return None
        port = int(reply[1])
        return next((s for s in self.servers if s.port == port), None)

    def primary(self) -> RedisServer:
        """The primary as a sentinel reports it (``SENTINEL GET-MASTER-ADDR-BY-NAME``)."""
        reported = self._reported(self._live_sentinels()[0])
        if reported is None:
            raise LookupError(f"the sentinels do not know {self.service!r}")
        return reported

    def _master_info(self, sentinel: RedisServer) -> dict[str, str]:
        flat = sentinel.call("SENTINEL", "MASTER", self.service)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def _replicas_synced(self) -> bool:
        roles = [s.call("ROLE") for s in self.servers if s.running]
        connected = [r for r in roles if r[0] == "slave" and r[3] == "connected"]
        return len(connected) == len(roles) - 1

    def _sentinels_ready(self) -> bool:
        primary = self.servers[0]
        for sentinel in self.sentinels:
            info = self._master_info(sentinel)
            if (
                int(info["port"]) != primary.port
                or int(info["num-slaves"]) != len(self.servers) - 1
                or int(info["num-other-sentinels"]) != len(self.sentinels) - 1
            ):
                return False
        return True

    # -- failures ------------------------------------------------------------------------

    def failover(self, timeout: float = 30, settle: bool = False) -> RedisServer:
        """``SENTINEL FAILOVER`` (no agreement needed) and wait for the new primary.

        The old primary stays a master, accepting writes, until a sentinel converts it to
        a replica some 10 s later; ``settle=True`` waits for that too (:meth:`wait_settled`).
        """
        old = self.primary()
        self._live_sentinels()[0].call("SENTINEL", "FAILOVER", self.service)
        new = self.wait_primary_change(old, timeout)
        if settle:
            self.wait_settled(timeout)
        return new

    def wait_settled(self, timeout: float = 30) -> None:
        """Wait until every running data server but the primary replicates from it with its
        link up (a demoted primary included)."""
        primary = self.primary()

        def settled() -> bool:
            for server in self.servers:
                if server is primary or not server.running:
                    continue
                role = server.call("ROLE")
                if role[0] != "slave" or role[2] != primary.port or role[3] != "connected":
                    return False
            return True

        self._wait(timeout, f"every server replicates from {primary.url}", settled)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary's process (its data dir stays); returns it."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_primary_change(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until every live sentinel reports the same primary other than ``old``, that
        server's ``ROLE`` is master, and no sentinel has a failover in progress (so a next
        ``failover()`` is not refused); returns the new primary."""
        found: list[RedisServer] = []

        def changed() -> bool:
            reported = {self._reported(s) for s in self._live_sentinels()}
            if len(reported) != 1:
                return False
            new = reported.pop()
            if new is None or new is old or new.call("ROLE")[0] != "master":
                return False
            if any(self._master_info(s)["flags"] != "master" for s in self._live_sentinels()):
                return False
            found[:] = [new]
            return True

        self._wait(timeout, f"a primary other than {old.url}", changed)
        return found[0]

    def _wait(self, timeout: float, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception as e:  # a process still starting, a connection refused
                last = e
            time.sleep(0.05)
        tails = "\n".join(f"--- {s.url}\n{s.log_tail(8)}" for s in self.sentinels)
        raise TimeoutError(f"not true within {timeout}s: {what} (last error {last!r})\n{tails}")

    def stop(self) -> None:
        """Stop the sentinels first (so they start no failover meanwhile), then the data
        servers, each by PID, and remove their dirs. Idempotent."""
        for server in [*self.sentinels, *self.servers]:
            server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_sentinel(config: str) -> RedisServer:
    # Sentinel rewrites its config file (its ID, the replicas and sentinels it found), so
    # the file must be writable: one temp dir per sentinel, owned by its server object.
    ddir = Path(tempfile.mkdtemp(prefix="redisflow-sentinel-"))
    try:
        conf = ddir / "sentinel.conf"
        conf.write_text(config)
        sentinel = RedisServer.start(["--sentinel"], data_dir=ddir, config_file=conf)
    except BaseException:
        shutil.rmtree(ddir, ignore_errors=True)
        raise
    sentinel.owns_dir = True
    return sentinel
