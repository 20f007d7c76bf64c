"""The seam for shared rate limits: ``shared: true`` takes its buckets from the state backend's factory, and buckets
in a shared store (Redis) run as async middleware on their route alone."""

from __future__ import annotations

from fulcrum.config import parse_config
from fulcrum.gateway import build_gateway
from fulcrum.middleware.builtins import RateLimit
from fulcrum.middleware.policy.ratelimit import Buckets, TokenBuckets
from fulcrum.middleware.shared import SharedRateLimit, StoreBuckets, store_buckets
from fulcrum.state.redis import RedisBuckets


def test_shared_rate_limits_use_the_backend_factory_and_local_ones_do_not() -> None:
    config = parse_config(
        {
            "upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}},
            "routes": [
                {
                    "name": "api",
                    "match": {"path_prefix": "/api/"},
                    "upstream": "app",
                    "middleware": [
                        {"rate_limit": {"rate": "5/s", "shared": True}},
                        {"rate_limit": {"rate": "50/s", "burst": 7}},
                    ],
                },
            ],
        },
        source="test",
    )
    made: list[tuple[float, int, str]] = []
    stores: list[Buckets] = []

    def factory(rate: float, burst: int, name: str) -> Buckets:
        made.append((rate, burst, name))
        store = TokenBuckets(rate, burst)
        stores.append(store)
        return store

    gateway = build_gateway(config, "test", shared_buckets=factory)
    try:
        chain = gateway.table.routes[0].chain
        limits = [mw for mw in chain.items if isinstance(mw, RateLimit)]
        assert made == [(5.0, 5, "api#0")]
        assert limits[0].buckets is stores[0]
        assert isinstance(limits[1].buckets, TokenBuckets) and limits[1].buckets is not stores[0]
        # the shared store is the one consulted: empty it and the route's first limit refuses
        for _ in range(5):
            assert stores[0].take("127.0.0.1", 100.0) == 0.0
        assert stores[0].take("127.0.0.1", 100.0) > 0.0
    finally:
        gateway.close()


def test_without_a_backend_shared_limits_live_in_this_process() -> None:
    config = parse_config(
        {
            "upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}},
            "routes": [{"upstream": "app", "middleware": [{"rate_limit": {"rate": "5/s", "shared": True}}]}],
        },
        source="test",
    )
    gateway = build_gateway(config, "test")
    try:
        limit = gateway.table.routes[0].chain.items[0]
        assert isinstance(limit, RateLimit) and isinstance(limit.buckets, TokenBuckets)
    finally:
        gateway.close()


def test_buckets_in_a_shared_store_make_only_their_route_async() -> None:
    config = parse_config(
        {
            "upstreams": {"app": {"servers": ["http://127.0.0.1:5001"]}},
            "routes": [
                {"name": "shared", "match": {"path_prefix": "/a/"}, "upstream": "app",
                 "middleware": [{"request_id": {}}, {"rate_limit": {"rate": "5/s", "shared": True}}]},
                {"name": "local", "upstream": "app", "middleware": [{"rate_limit": {"rate": "5/s"}}]},
            ],
        },
        source="test",
    )
    store = RedisBuckets("redis://127.0.0.1:1/0", "t")  # no I/O until a request needs it
    gateway = build_gateway(config, "test", shared_buckets=store_buckets(store))
    try:
        shared, local = (route.chain for route in gateway.table.routes)
        assert shared is not None and local is not None
        assert not shared.sync and isinstance(shared.items[1], SharedRateLimit)
        assert isinstance(shared.items[1].buckets, StoreBuckets)
        assert shared.describe()[1] == "rate_limit(5/s, burst 5, key ip), shared"
        assert local.sync and isinstance(local.items[0], RateLimit)  # shared: false keeps its hooks
        assert isinstance(local.items[0].buckets, TokenBuckets)
    finally:
        gateway.close()
