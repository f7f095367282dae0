"""Synchronous redis-py clients for the tests' checks, of a single server or of a cluster."""

from __future__ import annotations

import redis

from pulse.settings import redis_cluster_nodes, redis_is_cluster

SyncRedis = redis.Redis | redis.RedisCluster
"""What :func:`sync_redis` makes: the tests read with the commands both have (a cluster's
``scan_iter`` visits every master)."""


def sync_redis(url: str) -> SyncRedis:
    """A client of ``url``: ``redis://`` as redis-py reads it, ``redis+cluster://`` (Pulse's
    form for a cluster) as a cluster client that starts from the URL's first node."""
    if redis_is_cluster(url):
        host, port = redis_cluster_nodes(url)[0]
        return redis.RedisCluster(host=host, port=port)
    return redis.Redis.from_url(url)
