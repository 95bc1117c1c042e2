"""Pytest fixtures for Redis Cluster and Redis Sentinel tests, on private processes.

``redisflow_cluster`` is one 3-master cluster for the whole session (or the cluster of
``$REDISFLOW_TEST_CLUSTER_URL``); tests that kill nodes, fail over or need replicas start
their own with ``redis_cluster_factory``, and Sentinel setups with
``redis_sentinel_factory``. Whatever a factory started is stopped, by PID, after the test::

    def test_survives_a_failover(redis_cluster_factory):
        cluster = redis_cluster_factory(masters=3, replicas=1)
        cluster.failover(cluster.replicas()[0])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .cluster import RedisCluster
from .sentinel import SentinelSetup

__all__ = ["redis_cluster_factory", "redis_sentinel_factory", "redisflow_cluster"]


@pytest.fixture(scope="session")
def redisflow_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters (no replicas) for the test session, stopped at the
    end; with ``$REDISFLOW_TEST_CLUSTER_URL`` set (``redis+cluster://h:p,.../`` or
    ``redis://h:p/0`` of a node) that cluster instead, left as it is."""
    external = os.environ.get("REDISFLOW_TEST_CLUSTER_URL")
    if external:
        yield RedisCluster.external(external)
        return
    cluster = RedisCluster.start(masters=3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[..., RedisCluster]]:
    """Start clusters of this test alone: ``factory(masters=3, replicas=1, ...)`` takes the
    arguments of :meth:`RedisCluster.start`; all are stopped after the test."""
    made: list[RedisCluster] = []

    def start(**options: Any) -> RedisCluster:
        cluster = RedisCluster.start(**options)
        made.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture
def redis_sentinel_factory() -> Iterator[Callable[..., SentinelSetup]]:
    """Start Sentinel setups of this test alone: ``factory(replicas=2, sentinels=3, ...)``
    takes the arguments of :meth:`SentinelSetup.start`; all are stopped after the test."""
    made: list[SentinelSetup] = []

    def start(**options: Any) -> SentinelSetup:
        setup = SentinelSetup.start(**options)
        made.append(setup)
        return setup

    try:
        yield start
    finally:
        for setup in made:
            setup.stop()
