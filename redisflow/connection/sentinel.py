"""Redis Sentinel: find the primary of a service, and follow it when it changes.

``Sentinels.primary()`` asks the sentinels in turn (``SENTINEL GET-MASTER-ADDR-BY-NAME``)
and checks with ``ROLE`` that the node it names is a master: right after a failover a
sentinel may still name the old one. Every link of a sentinel connector resolves the primary
when it opens, so a loop that lost its connection (the primary died, or answered
``READONLY``/``-UNBLOCKED`` because it became a replica) reconnects to the new primary.

``Sentinels.watch()`` follows the failovers of the service on every sentinel of the URL.
The old primary stays writable during a failover, and after it for several seconds (about
11 s measured on 7.0) until a sentinel demotes it; what is written there is lost when it
resyncs. Worse, from the promotion of the chosen replica until the sentinel reconfigures the
other replicas (about one second), those replicas still follow the old primary and
acknowledge its writes to ``WAIT``, writes that vanish with their resync. So as soon as the
elected sentinel announces a failover (``+elected-leader``, ~0.1 s before the promotion) the
flow leaves the old primary: its links are closed, and no link opens there again until the
sentinels name the new one (``+switch-master``) or the failover is aborted
(docs/design.md, "Failover").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..errors import AuthError, ConnectionLost, ReplyError
from .link import Link
from .url import Address, Endpoint, ServerSpec

log = logging.getLogger("redisflow")
#: How long an answer of the sentinels is trusted (many links reconnect at once).
FRESH = 0.5
#: Seconds a primary under failover (or just replaced) is not connected to, from the last
#: event about it: a sentinel that has not heard of the switch yet may still name it, and it
#: stays a writable master until demoted. Bounds the wait if the end of a failover is missed.
AVOID = 30.0
#: Events of the elected sentinel: a failover of a primary has begun (in this order, from
#: the election to the promotion; the first one seen is enough).
STARTED = frozenset({
    "+elected-leader", "+failover-state-select-slave", "+selected-slave",
    "+failover-state-send-slaveof-noone", "+promoted-slave",
})  # fmt: skip
#: A failover that began was given up: the primary stays.
ABORTED = frozenset({"-failover-abort-no-good-slave", "-failover-abort-slave-timeout"})
SWITCHED = "+switch-master"
EVENTS = (*sorted(STARTED), *sorted(ABORTED), SWITCHED)


class Sentinels:
    """The sentinels of one service."""

    def __init__(self, spec: ServerSpec, *, name: str = "redisflow") -> None:
        if spec.service is None:  # checked by parse_url already
            raise ConnectionLost("no service named in the sentinel URL")
        self.spec, self.service, self.name = spec, spec.service, name
        self.addresses = list(spec.addresses)
        self._known: tuple[float, Endpoint] | None = None
        self._asking: asyncio.Future[Endpoint] | None = None
        self._avoid: dict[Address, float] = {}  # primaries under failover: until when
        self._switch: tuple[Address, Address] | None = None  # the last switch acted on

    def avoided(self, address: Address) -> bool:
        """Whether ``address`` is a primary being failed over (or just replaced)."""
        until = self._avoid.get(address)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._avoid[address]
        return False

    async def primary(self) -> Endpoint:
        """The primary's endpoint (asked again when the last answer is older than a moment).
        Raises ConnectionLost when no sentinel names a primary that confirms it."""
        known = self._known
        if known is not None and time.monotonic() - known[0] < FRESH:
            return known[1]
        if self._asking is None:
            self._asking = asyncio.get_running_loop().create_future()
            try:
                found = await self._ask()
                self._known = (time.monotonic(), found)
                self._asking.set_result(found)
            except BaseException as exc:
                self._asking.set_exception(exc)
                self._asking.exception()
                raise
            finally:
                self._asking = None
            return found
        return await asyncio.shield(self._asking)

    def forget(self) -> None:
        """Ask the sentinels again at the next ``primary()``."""
        self._known = None

    async def _ask(self) -> Endpoint:
        failure: BaseException | str = "no sentinel answered"
        unknown: list[str] = []  # sentinels that do not monitor the service
        for address in list(self.addresses):
            try:
                found = await self._ask_one(address)
            except (ConnectionLost, OSError, ReplyError) as exc:
                if isinstance(exc, AuthError):
                    raise AuthError(
                        f"the sentinel at {address} refused: {exc} (the sentinels' own"
                        " credentials go in the URL: ?sentinel_password=...&sentinel_username="
                        "...; docs/security.md)"
                    ) from None
                failure = exc
                continue
            if isinstance(found, Endpoint):
                self.addresses.remove(address)  # ask the one that answered first next time
                self.addresses.insert(0, address)
                return found
            if found is None:
                unknown.append(str(address))
            else:
                failure = found
        if unknown and len(unknown) == len(self.addresses):
            raise ConnectionLost(
                f"no sentinel knows a primary named {self.service!r} (asked {', '.join(unknown)}:"
                f" SENTINEL GET-MASTER-ADDR-BY-NAME answered nothing; {self.spec.display})"
            )
        raise ConnectionLost(f"no sentinel of {self.spec.display} names a primary ({failure})")

    async def _ask_one(self, address: Address) -> Endpoint | str | None:
        """The primary ``address`` names (None: it knows no such service; a string: why the
        server it names is not usable)."""
        link = Link(self.spec.sentinel_endpoint(address), name=f"{self.name}:sentinel")
        try:
            await link.open()
            reply = await link.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        finally:
            await link.close()
        if not reply:
            return None
        endpoint = self.spec.endpoint(Address(reply[0].decode(), int(reply[1])))
        if self.avoided(endpoint.address):
            return f"{address} names {endpoint.address}, which a failover is replacing"
        node = Link(endpoint, name=f"{self.name}:role")
        try:
            await node.open()
            role = await node.call("ROLE")
        finally:
            await node.close()
        if role and role[0] == b"master":
            return endpoint
        return f"{address} names {endpoint}, which is not a master (a failover under way?)"

    async def watch(self, leave: Callable[[Address], Awaitable[None]]) -> None:
        """Follow the failovers of this service on every sentinel of the URL (the one
        elected to run a failover announces its steps); ``leave(old)`` is called once when a
        failover of the primary ``old`` begins or is seen to have ended. Runs until
        cancelled."""
        async with asyncio.TaskGroup() as tg:
            for address in self.spec.addresses:
                tg.create_task(self._listen(address, leave))

    async def _listen(self, address: Address, leave: Callable[[Address], Awaitable[None]]) -> None:
        while True:
            link = Link(self.spec.sentinel_endpoint(address), name=f"{self.name}:watch")
            try:
                await link.open()
                await link.send(["SUBSCRIBE", *EVENTS])
                await link.read()
                async for replies in link.replies():
                    for reply in replies:
                        if reply[0] == b"message":
                            await self._event(reply[1].decode(), reply[2].decode(), leave)
            except (ConnectionLost, OSError, ReplyError):
                pass
            finally:
                await link.close()
            await asyncio.sleep(1.0)

    async def _event(
        self, channel: str, data: str, leave: Callable[[Address], Awaitable[None]]
    ) -> None:
        event = failover_event(channel, data, self.service)
        if event is None:
            return
        what, old, new = event
        if what == "aborted":
            if self._avoid.pop(old, None) is not None:
                self.forget()
                log.warning("sentinel: the failover of %s was aborted; %s stays its primary",
                            self.service, old)  # fmt: skip
            return
        first = not self.avoided(old)
        self._avoid[old] = time.monotonic() + AVOID
        self.forget()
        if new is not None:  # switched: every sentinel announces it; act once
            self._avoid.pop(new, None)
            if (old, new) == self._switch:
                return
            self._switch = (old, new)
            log.warning("sentinel: %s switched to a new primary (%s)", self.service, new)
        elif first:
            log.warning("sentinel: a failover of %s has begun; leaving %s until it ends",
                        self.service, old)  # fmt: skip
        else:
            return
        await leave(old)


def failover_event(
    channel: str, data: str, service: str
) -> tuple[str, Address, Address | None] | None:
    """What a sentinel event says of ``service``: ``("started", primary, None)``,
    ``("aborted", primary, None)``, ``("switched", old, new)``, or None (another event or
    another service). A switch reads ``<name> <old ip> <old port> <new ip> <new port>``; the
    others name the primary as ``master <name> <ip> <port>`` or, for an event about a
    replica, after an ``@``: ``slave <ip:port> <ip> <port> @ <name> <ip> <port>``."""
    parts = data.split()
    try:
        if channel == SWITCHED:
            name, old_host, old_port, new_host, new_port = parts[:5]
            if name != service:
                return None
            return "switched", Address(old_host, int(old_port)), Address(new_host, int(new_port))
        if channel not in STARTED and channel not in ABORTED:
            return None
        at = parts.index("@") + 1 if "@" in parts else 1
        if at == 1 and parts[0] != "master":
            return None
        name, host, port = parts[at : at + 3]
        if name != service:
            return None
        return ("started" if channel in STARTED else "aborted"), Address(host, int(port)), None
    except ValueError:  # a message of another shape: not ours to read
        return None


class ResolvedLink(Link):
    """A link to whichever node ``resolve()`` names when it opens (the current primary)."""

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Endpoint]],
        avoided: Callable[[Address], bool],
        first: Endpoint,
        **kw: Any,
    ):
        super().__init__(first, **kw)
        self.resolve, self.avoided = resolve, avoided

    async def open(self, scripts: Iterable[Any] = ()) -> None:
        self.endpoint = await self.resolve()
        await super().open(scripts)
        if self.avoided(self.endpoint.address):  # a failover began while it connected
            await self.close()
            raise ConnectionLost(f"{self.endpoint.address}: a failover is replacing it")
