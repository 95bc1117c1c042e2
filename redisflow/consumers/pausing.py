"""Pausing a consumer (a base class of ``base.Consumer``, over the prefetch window).

``features/pauses.py`` keeps which sources are paused and tells each running consumer; a
paused consumer stops fetching as a stop does, without stopping: its fetch loop returns at
its next check (``halted``), a blocked fetch is woken (``interrupt``), and ``hold`` waits for
the resume while what it held is finished and acknowledged (no fetch carries the acks
meanwhile). docs/design.md, "Pause".
"""

from __future__ import annotations

import asyncio

import anyio

from .acks import Window


class Pausing(Window):
    """The paused state of one consumer."""

    stopping: bool

    def __init__(self) -> None:
        super().__init__()
        self.paused = False  # fetch nothing until resumed (``pause``)
        self.parked = False  # paused, and the fetch loop has returned: nothing in flight
        self._go = asyncio.Event()  # set on resume or stop
        self._moved = asyncio.Event()  # set (and replaced) when ``parked`` may have changed

    def interrupt(self) -> None:
        """Wake a fetch that blocks in Redis, so that it sees ``halted``."""
        raise NotImplementedError

    @property
    def halted(self) -> bool:
        """Whether the fetch loop must return (stopping, or paused)."""
        return self.stopping or self.paused

    def halt(self) -> None:
        """Make the fetch loop return (``halted`` says why): wake it wherever it waits."""
        if self.stopping:
            self._go.set()
            self._moved_now()
        self._room.set()  # a fetch loop waiting for room in the window must see it
        self.interrupt()

    def pause(self, paused: bool) -> None:
        """Stop fetching until called with False (what is held is finished and acknowledged
        meanwhile), or fetch again."""
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self._go.clear()
            self.halt()
        else:
            self._go.set()
            self._moved_now()

    async def wait_parked(self) -> None:
        """Return once a paused consumer's fetch loop has returned (at once when it is not
        paused, or stopping)."""
        while self.paused and not self.parked and not self.stopping:
            await self._moved.wait()

    async def hold(self) -> None:
        """While paused (the fetch loop returned): wait for the resume, and send the acks
        of the messages that finish meanwhile."""
        self.parked = self.paused
        self._moved_now()
        try:
            while self.paused and not self.stopping:
                with anyio.move_on_after(0.05 if self.backlog or self.acks else 1.0):
                    await self._go.wait()
                await self.send_acks()
        finally:
            self.parked = False

    def _moved_now(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
