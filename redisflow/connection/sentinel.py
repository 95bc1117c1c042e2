"""Redis Sentinel: find the primary of a service, and follow it when it changes.

``Sentinels.primary()`` asks the sentinels in turn (``SENTINEL GET-MASTER-ADDR-BY-NAME``)
and checks with ``ROLE`` that the node it names is a master: right after a failover a
sentinel may still name the old one. Every link of a sentinel connector resolves the primary
when it opens, so a loop that lost its connection (the primary died, or answered
``READONLY``/``-UNBLOCKED`` because it became a replica) reconnects to the new primary.

``Sentinels.watch()`` also listens to ``+switch-master`` on a sentinel: on a graceful
failover the old primary stays writable for several seconds (about 11 s measured on 7.0)
before a sentinel demotes it, and a client still writing there loses those writes when it
resyncs. So on a switch every open link is closed at once, and reconnects to the new primary
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


class Sentinels:
    """The sentinels of one service."""

    def __init__(self, spec: ServerSpec, *, name: str = "redisflow") -> None:
        if spec.service is None:  # checked by parse_url already
            raise ConnectionLost("no service named in the sentinel URL")
        self.spec, self.service, self.name = spec, spec.service, name
        self.addresses = list(spec.addresses)
        self._known: tuple[float, Endpoint] | None = None
        self._asking: asyncio.Future[Endpoint] | None = None

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
        node = Link(endpoint, name=f"{self.name}:role")
        try:
            await node.open()
            role = await node.call("ROLE")
        finally:
            await node.close()
        if role and role[0] == b"master":
            return endpoint
        return f"{address} names {endpoint}, which is not a master (a failover under way?)"

    async def watch(self, switched: Callable[[], Awaitable[None]]) -> None:
        """Listen to ``+switch-master`` of this service on a sentinel (moving to another
        when one fails) and call ``switched()`` at each; runs until cancelled."""
        while True:
            for address in list(self.addresses):
                link = Link(self.spec.sentinel_endpoint(address), name=f"{self.name}:watch")
                try:
                    await link.open()
                    await link.send(["SUBSCRIBE", "+switch-master"])
                    await link.read()
                    async for replies in link.replies():
                        if _switches(replies, self.service):
                            log.warning("sentinel: %s switched to a new primary", self.service)
                            self.forget()
                            await switched()
                except (ConnectionLost, OSError, ReplyError):
                    pass
                finally:
                    await link.close()
            await asyncio.sleep(1.0)


def _switches(replies: Iterable[Any], service: str) -> bool:
    """Whether a batch of Pub/Sub messages holds a ``+switch-master`` of ``service``."""
    for reply in replies:
        if reply[0] == b"message" and reply[2].split(b" ", 1)[0].decode() == service:
            return True
    return False


class ResolvedLink(Link):
    """A link to whichever node ``resolve()`` names when it opens (the current primary)."""

    def __init__(self, resolve: Callable[[], Awaitable[Endpoint]], first: Endpoint, **kw: Any):
        super().__init__(first, **kw)
        self.resolve = resolve

    async def open(self, scripts: Iterable[Any] = ()) -> None:
        self.endpoint = await self.resolve()
        await super().open(scripts)
