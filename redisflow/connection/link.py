"""``Link``: one connection to one Redis server, owned by one loop.

Built on an asyncio protocol that feeds every byte to a hiredis reader, so a reply costs one
``gets()`` and no read call per reply. A link never reconnects by itself and has no timeout
of its own: the loop that owns it decides (a blocking fetch may wait in Redis for as long as
it asked to; a producer round trip is bounded by its caller). Writes are queued with the
transport, so ``send`` before ``read`` pipelines requests (prefetch).

Error replies come back as ``ReplyError`` objects (``reply``) or raised (``read``); the
codes that mean "this server cannot serve you now" (``LOADING``, ``MASTERDOWN``,
``READONLY``) are raised as ``ConnectionLost`` instead, so every loop treats them as an
outage (docs/design.md, "Errors").
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import re
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import hiredis

from ..errors import AuthError, ConnectionLost, PermissionDenied, ReplyError
from .url import Endpoint

#: Error codes after which a server cannot serve this connection for now.
LOST_CODES = frozenset({"LOADING", "MASTERDOWN", "READONLY"})
_NED = object()  # what hiredis returns until a whole reply is buffered


def reply_error(message: str) -> ReplyError:
    """The exception of an error reply (hiredis calls it for each one)."""
    code = message.split(" ", 1)[0]
    if code in ("WRONGPASS", "NOAUTH") or message.startswith("ERR AUTH"):
        return AuthError(message)
    if code == "NOPERM" or "user executing the script can't run" in message:
        return PermissionDenied(message)
    return ReplyError(message)


def denied(error: PermissionDenied, command: Sequence[Any]) -> PermissionDenied:
    """``error`` with what was refused and the ACL rule that would allow it (errors path
    only: the command is known where the reply is handed to its caller)."""
    message = str(error)
    if "the ACL user needs" in message:
        return error
    name = _text(command[0]).upper() if command else "?"
    script = name in ("EVALSHA", "EVAL")
    keys = [_text(k) for k in (command[3 : 3 + int(command[2])] if script else command[1:2])]
    what = f"a script on {', '.join(keys)}" if script else " ".join([name, *keys])
    named = re.search(r"run the '([^']+)' command", message)
    if named:  # Redis names the refused command (``client|unblock``: a subcommand)
        rule = f"+{named.group(1)}"
    elif "key" in message and keys:
        rule = f"a key pattern matching {keys[0]} (~{keys[0]})"
    elif script:  # a command inside the script is refused: ACL LOG names it
        rule = "the commands its feature runs (ACL LOG names the one refused)"
    else:
        rule = f"+{name.lower()}"
    return PermissionDenied(
        f"{message} ({what}: the ACL user needs {rule}; docs/security.md lists the rules of"
        " each feature)"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def pack(commands: Iterable[Sequence[Any]]) -> bytes:
    """Encode commands in RESP (bytes, str, int and float arguments); TypeError for another
    type, or a str with no UTF-8 form (a lone surrogate)."""
    out: list[bytes] = []
    try:
        for args in commands:
            out.append(b"*%d\r\n" % len(args))
            for arg in args:
                kind = type(arg)  # exact types first: the common case, cheaper than isinstance
                if kind is bytes:
                    data = arg
                elif kind is str:
                    data = arg.encode()
                elif kind is int:
                    data = b"%d" % arg
                elif isinstance(arg, bytes | bytearray | memoryview):
                    data = bytes(arg)
                elif isinstance(arg, str):
                    data = arg.encode()
                elif isinstance(arg, int) and not isinstance(arg, bool):
                    data = b"%d" % arg
                elif isinstance(arg, float):
                    data = repr(arg).encode()
                else:
                    raise TypeError(f"cannot send a {type(arg).__name__} to Redis: {arg!r}")
                out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    except UnicodeEncodeError as exc:
        raise TypeError(
            f"cannot send {exc.object!r} to Redis: not valid text ({exc.reason})"
        ) from None
    return b"".join(out)


#: Bytes one socket read may take. A buffered protocol reads into one buffer per connection:
#: a plain one gets a fresh 256 KiB bytes object per read, which glibc serves by mmap, shrinks
#: by mremap and frees by munmap, three syscalls per reply (-13% on one-by-one sends).
READ_SIZE = 128 * 1024

#: Seconds a closing link waits for its socket to close before aborting it.
CLOSE_TIMEOUT = 1.0


class _Protocol(asyncio.BufferedProtocol):
    """Feeds received bytes to the reader and wakes the one reader waiting for them."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        # Anonymous memory, not a bytearray: the kernel backs a page only once a reply
        # reaches it, so an idle link (a fetch loop of a quiet partition) costs a page, not
        # 128 KiB (a bytearray is zeroed, so all of it is resident at once).
        self.buffer = mmap.mmap(-1, READ_SIZE)
        self.view = memoryview(self.buffer)  # a view: TLS reads into slices of it
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost: ConnectionLost | None = None
        self.drained: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] | None = None  # a close waiting for the socket
        self.gone = False  # connection_lost was called: the socket is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.feed(self.buffer, 0, nbytes)  # hiredis copies what it is given
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:  # else the link was dropped on purpose, for that reason
            self.lost = ConnectionLost(
                "the server closed the connection" if exc is None else f"connection lost: {exc}"
            )
        self.gone = True
        for fut in (self.waiter, self.drained, self.closed):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self.waiter = self.drained = None

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None


class Link:
    """One connection to ``endpoint``: ``open`` it, ``send`` now and ``read`` later."""

    def __init__(self, endpoint: Endpoint, *, name: str | None = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.client_id: int | None = None
        self._proto: _Protocol | None = None
        self._reader: Any = None
        self.waiting_since: float | None = None  # loop time a read started waiting for data

    def __repr__(self) -> str:
        return f"Link({self.endpoint}, {self.name!r}, id={self.client_id})"

    @property
    def connected(self) -> bool:
        """Whether the connection is open (it may still be found dead at the next read)."""
        proto = self._proto
        return proto is not None and proto.lost is None

    async def open(self, scripts: Iterable[Any] = ()) -> None:
        """Connect, authenticate, select the database, learn the CLIENT ID (to unblock the
        link from another one), and load ``scripts`` (``protocol.scripts.Script``)."""
        await self.close()
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        reader = hiredis.Reader(replyError=reply_error, notEnoughData=_NED)
        address = endpoint.address
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                if address.path is not None:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(reader), address.path
                    )
                else:
                    ssl = endpoint.tls.context() if endpoint.tls is not None else None
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(reader), address.host, address.port, ssl=ssl
                    )
                    _keepalive(proto.transport)
                self._proto, self._reader = proto, reader
                await self._handshake(list(scripts))
        except TimeoutError:
            await self.close()
            raise ConnectionLost(
                f"no answer from {address} within {endpoint.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            await self.close()
            raise ConnectionLost(f"cannot connect to {address}: {exc.strerror or exc}") from None
        except BaseException:
            await self.close()
            raise

    async def _handshake(self, scripts: list[Any]) -> None:
        endpoint = self.endpoint
        commands: list[list[Any]] = []
        if endpoint.password is not None:
            user = [endpoint.username] if endpoint.username else []
            commands.append(["AUTH", *user, endpoint.password])
        if endpoint.db:
            commands.append(["SELECT", endpoint.db])
        if self.name:
            commands.append(["CLIENT", "SETNAME", self.name])
        commands.append(["CLIENT", "ID"])
        commands += [["SCRIPT", "LOAD", script.source] for script in scripts]
        await self.send(*commands)
        replies = [await self.reply() for _ in commands]
        for command, reply in zip(commands, replies, strict=True):
            if not isinstance(reply, ReplyError):
                continue
            if command[0] == "CLIENT" and isinstance(reply, PermissionDenied):
                continue  # a user without CLIENT: no name, no unblocking (docs/security.md)
            if reply.code in LOST_CODES:
                raise ConnectionLost(f"{self.endpoint}: {reply}")
            raise reply
        client_id = replies[len(commands) - 1 - len(scripts)]
        self.client_id = client_id if isinstance(client_id, int) else None

    async def send(self, *commands: Sequence[Any]) -> None:
        """Write several commands at once; read their replies later, in order."""
        await self.write(pack(commands))

    async def write(self, data: bytes) -> None:
        """Write already packed commands (see ``pack``)."""
        proto = self._proto
        if proto is None or proto.lost is not None or proto.transport is None:
            raise ConnectionLost(f"{self.endpoint}: the link is closed")
        proto.transport.write(data)
        if proto.drained is not None:  # the transport's buffer is full: wait for room
            await proto.drained
            if proto.lost is not None:
                raise proto.lost

    async def reply(self) -> Any:
        """The next reply; an error reply is returned as its exception, not raised."""
        reader = self._reader
        if reader is None:
            raise ConnectionLost(f"{self.endpoint}: the link is closed")
        reply = reader.gets()
        while reply is _NED:
            await self._more()
            reply = reader.gets()
        return reply

    async def read(self) -> Any:
        """The next reply; an error reply is raised (a ``LOST_CODES`` one as ConnectionLost)."""
        reply = await self.reply()
        if isinstance(reply, ReplyError):
            # A primary demoted to a replica wakes its blocked clients with UNBLOCKED
            # ("instance state changed"): an outage, as READONLY is.
            if reply.code in LOST_CODES or "state changed" in str(reply):
                raise ConnectionLost(f"{self.endpoint}: {reply}")
            raise reply
        return reply

    async def call(self, *args: Any) -> Any:
        """Send one command and read its reply."""
        await self.send(args)
        try:
            return await self.read()
        except PermissionDenied as exc:
            raise denied(exc, args) from None

    async def replies(self) -> AsyncIterator[list[Any]]:
        """Every reply as it arrives, a socket read's worth at a time (for Pub/Sub)."""
        reader = self._reader
        if reader is None:
            raise ConnectionLost(f"{self.endpoint}: the link is closed")
        while True:
            batch: list[Any] = []
            reply = reader.gets()
            while reply is not _NED:
                if isinstance(reply, ReplyError):
                    raise reply
                batch.append(reply)
                reply = reader.gets()
            if batch:
                yield batch
            await self._more()

    async def _more(self) -> None:
        proto = self._proto
        if proto is None:
            raise ConnectionLost(f"{self.endpoint}: the link is closed")
        if proto.lost is not None:
            raise proto.lost
        waiter = proto.waiter
        loop = asyncio.get_running_loop()
        if waiter is None or waiter.done():
            waiter = proto.waiter = loop.create_future()
        self.waiting_since = loop.time()
        try:
            await waiter  # data arrived, or the connection was lost: the caller's gets() tells
        finally:
            self.waiting_since = None

    async def watch(self, block: float, margin: float = 10.0) -> None:
        """Drop this link whenever a read has waited ``block + margin`` seconds (it fails
        with ``ConnectionLost``, and its loop connects again): a server that stopped
        answering (SIGSTOP, a hung host) keeps its socket open, so TCP keepalive never
        tells. For a link whose commands block at most ``block``: not a Pub/Sub one."""
        limit = block + margin
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(limit / 4)
            since = self.waiting_since
            if since is not None and loop.time() - since > limit:
                self.abort(f"no reply within {limit:g}s")

    def abort(self, reason: str) -> None:
        """Drop the connection now: the read waiting on it fails with ``reason``."""
        proto = self._proto
        if proto is None or proto.transport is None or proto.lost is not None:
            return
        proto.lost = ConnectionLost(f"{self.endpoint}: {reason}")
        proto.transport.abort()  # connection_lost wakes the waiting read, keeping the reason

    def forsake(self) -> None:
        """Drop the connection without its event loop, which has ended: shut the socket
        down (the server sees it go); the socket itself is freed with the transport."""
        proto, self._proto = self._proto, None
        self.client_id = None
        transport = proto.transport if proto is not None else None
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, RuntimeError):
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            transport.abort()  # a closed loop refuses the callback: RuntimeError

    async def close(self) -> None:
        """Drop the connection (a reply not read yet is lost with it) and wait until its
        socket is closed: at most ``CLOSE_TIMEOUT``, then abort. A TLS close waits for the
        server's answer to its close_notify; a frozen server never gives it, and a loop
        ending meanwhile would leave the socket open (docs/design.md, "Connections")."""
        proto, self._proto = self._proto, None
        self.client_id = None
        if proto is None or proto.transport is None:
            return
        transport = proto.transport
        transport.close()  # writes still buffered are sent first
        if proto.lost is None:
            proto.lost = ConnectionLost(f"{self.endpoint}: the link was closed")
        loop = asyncio.get_running_loop()
        for _ in range(2):  # the close; the abort, if the server did not answer in time
            if proto.gone:
                return
            proto.closed = loop.create_future()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await proto.closed
            except TimeoutError:
                pass
            finally:
                if not proto.gone:  # timed out or cancelled: wait no more for the server
                    transport.abort()


def _keepalive(transport: asyncio.BaseTransport | None) -> None:
    """TCP keepalive, so that a blocked read notices a peer that vanished (about 30 s)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
