"""TLS end to end: a private server that also listens with TLS (a self-signed certificate
made with ``openssl`` for 127.0.0.1), and a flow on ``rediss://`` that produces and consumes
every reliable kind and a channel through it. Connections read into one buffer of their own
(docs/design.md, "Connections"); the TLS layer fills it in slices. Closing a link to a frozen
server still closes its socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import anyio
import pytest

from redisflow import Flow
from redisflow.connection.link import Link
from redisflow.connection.url import parse_url
from redisflow.errors import ConnectionLost
from tests.support.flows import eventually
from tests.support.kinds import RELIABLE, Kind
from tests.support.servers import RedisProc, free_port, start_redis, stop_redis

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProc, str]]:
    """A private server with a TLS port; the URL (``rediss://``) trusting its certificate."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificate"
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    try:
        proc = start_redis(
            ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        )  # fmt: skip
    except RuntimeError as exc:  # the embedded Valkey is built without TLS (docs/server.md)
        if "TLS support" not in str(exc):
            raise
        pytest.skip("this server binary has no TLS; CI runs these tests on redis-server")
    try:
        yield proc, f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    finally:
        stop_redis(proc)


@pytest.mark.parametrize("kind", [k for k in RELIABLE if k.partitions == 1], ids=str)
async def test_every_kind_over_tls(tls_server: tuple[RedisProc, str], kind: Kind, ns: str) -> None:
    """3,000 messages of ~1 KB (replies spanning many TLS records and socket reads) sent and
    handled over TLS, each once."""
    _, url = tls_server
    flow = Flow(url, prefix=ns)
    name = kind.name(ns)
    seen: list[int] = []

    async def handle(job: dict[str, int | str]) -> None:
        seen.append(int(job["n"]))

    kind.on(flow, name)(handle)
    try:
        await kind.produce_many(flow, name, [{"n": n, "pad": "x" * 1000} for n in range(3000)])
        async with flow:
            await eventually(lambda: len(seen) >= 3000, within=30, what="3,000 handled")
            await anyio.sleep(0.2)
        assert sorted(seen) == list(range(3000))
    finally:
        await flow.aclose()


async def test_a_channel_over_tls(tls_server: tuple[RedisProc, str], ns: str) -> None:
    """Pub/Sub over TLS: 100 messages received in order."""
    _, url = tls_server
    flow = Flow(url, prefix=ns)
    got: list[int] = []

    @flow.on_channel(f"{ns}.news")
    async def news(item: dict[str, int]) -> None:
        got.append(item["n"])

    async with flow:
        for n in range(100):
            await flow.publish(f"{ns}.news", {"n": n})
        await eventually(lambda: len(got) == 100, within=10, what="100 received")
    assert got == list(range(100))


async def test_an_untrusted_certificate_is_refused(tls_server: tuple[RedisProc, str]) -> None:
    """Without the CA of the server's certificate, the connection is refused (no fall back
    to plain text): the error says why."""
    _, url = tls_server
    flow = Flow(url.split("?", 1)[0], prefix="untrusted")
    try:
        with pytest.raises((ConnectionLost, OSError), match=r"(?i)certificate"):
            await flow.enqueue("q", {"n": 1})
    finally:
        await flow.aclose()


def _sockets() -> set[str]:
    """The sockets this process has open (``socket:[inode]``)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed already
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


async def test_closing_a_link_to_a_frozen_server_closes_its_socket(
    tls_server: tuple[RedisProc, str],
) -> None:
    """A TLS close waits for the server's answer to its close_notify; a frozen server never
    answers. The close still ends with the socket closed (bounded wait, then abort), so no
    socket outlives the link (an unclosed transport once the loop ends)."""
    proc, url = tls_server
    assert proc.pid is not None
    before = _sockets()
    link = Link(parse_url(url).endpoint())
    await link.open()
    assert await link.call("PING") == b"PONG"
    assert len(_sockets() - before) == 1
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await link.close()
        assert _sockets() - before == set()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
