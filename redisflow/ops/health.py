"""What a worker checks of the server it drains, at start and in ``redisflow check``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..connection import REDIS_ERRORS
from ..protocol.replies import text

if TYPE_CHECKING:
    from ..connection import Connector

log = logging.getLogger("redisflow")


async def evicting(connector: Connector) -> list[str]:
    """A warning per ``maxmemory-policy`` other than ``noeviction`` (on any master): a full
    Redis would then drop queued messages silently. A user without ``CONFIG GET`` (the
    usual ACL) is not told: noted at DEBUG. What a start warns of, and ``redisflow check``."""
    try:
        replies = await connector.on_masters("CONFIG", "GET", "maxmemory-policy")
    except REDIS_ERRORS as exc:
        log.debug("maxmemory-policy not checked (%s)", exc)
        return []
    policies = {text(reply[1]) for reply in replies if len(reply) == 2}
    return [
        f"Redis at {connector.display} has maxmemory-policy {policy}: when full it evicts"
        " keys, queued messages included, silently; set noeviction (a full Redis then"
        " refuses new messages and workers go on draining)"
        for policy in sorted(policies - {"noeviction"})
    ]
