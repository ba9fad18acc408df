"""Prometheus metrics, computed when scraped.

A custom collector reads the tier's live state (sessions, pools, server slots, pin and auth
counters the tier keeps anyway) at scrape time, so serving clients costs nothing extra: no
metric object is touched per query or per packet. Each tier has its own CollectorRegistry, so
several tiers in one process (tests, the demo) never mix their numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import views

if TYPE_CHECKING:
    from ..tier import Tier

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


class TierCollector:
    """Every sluice_* metric of one tier."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier

    def collect(self) -> Iterator[Metric]:
        tier = self.tier

        clients = GaugeMetricFamily(
            "sluice_client_connections", "Client sessions by state.", labels=["state"]
        )
        for state, count in views.sessions_by_state(tier).items():
            clients.add_metric([state], count)
        yield clients

        servers = views.server_rows(tier)
        upstream = GaugeMetricFamily(
            "sluice_upstream_connections",
            "Connections to each upstream server, open or being opened (both count against "
            "the cap).",
            labels=["server", "state"],
        )
        limit = GaugeMetricFamily(
            "sluice_upstream_connection_limit",
            "The hard cap on connections to each upstream server (pool.max_connections).",
            labels=["server"],
        )
        waiting = GaugeMetricFamily(
            "sluice_pool_waiting_clients",
            "Clients queued for a connection to each upstream server.",
            labels=["server"],
        )
        for row in servers:
            upstream.add_metric([row.name, "open"], row.open)
            upstream.add_metric([row.name, "opening"], row.opening)
            limit.add_metric([row.name], row.limit)
            waiting.add_metric([row.name], row.waiters)
        yield upstream
        yield limit
        yield waiting

        idle = GaugeMetricFamily(
            "sluice_pool_idle_connections",
            "Idle pooled connections per upstream server and user.",
            labels=["server", "user"],
        )
        active = GaugeMetricFamily(
            "sluice_pool_active_connections",
            "Pooled connections in use by a client, per upstream server and user.",
            labels=["server", "user"],
        )
        for pool in views.pool_rows(tier):
            idle.add_metric([pool.server, pool.user], pool.idle)
            active.add_metric([pool.server, pool.user], pool.active)
        yield idle
        yield active

        pinned = CounterMetricFamily(
            "sluice_pinned_sessions",
            "Client sessions pinned to their upstream connection since start, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(tier.pins.items()):
            pinned.add_metric([reason], count)
        yield pinned

        yield CounterMetricFamily(
            "sluice_auth_failures",
            "Client logins refused (unknown user or wrong password) since start.",
            value=tier.auth_failures,
        )


def tier_registry(tier: Tier) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierCollector(tier))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)
