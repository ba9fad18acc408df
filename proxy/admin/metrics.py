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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..stats import COMMAND_NAMES, Histogram
from . import views

if TYPE_CHECKING:
    from ..heartbeat import Heartbeat
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
        oldest = GaugeMetricFamily(
            "sluice_pool_oldest_wait_seconds",
            "How long the longest waiting client has waited for a pooled connection so far.",
            labels=["server", "user"],
        )
        idle_transaction = GaugeMetricFamily(
            "sluice_pool_longest_idle_transaction_seconds",
            "The longest a client holding a pooled connection has sat idle in a transaction.",
            labels=["server", "user"],
        )
        for pool in views.pool_rows(tier):
            labels = [pool.server, pool.user]
            idle.add_metric(labels, pool.idle)
            active.add_metric(labels, pool.active)
            oldest.add_metric(labels, pool.oldest_wait_ms / 1000)
            idle_transaction.add_metric(labels, pool.idle_in_transaction_ms / 1000)
        yield idle
        yield active
        yield oldest
        yield idle_transaction

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
        yield from self._traffic()
        yield from self._gate_and_switchover()
        if tier.heartbeat is not None:
            yield from self._heartbeat(tier.heartbeat)

    def _heartbeat(self, beat: Heartbeat) -> Iterator[Metric]:
        writes = CounterMetricFamily(
            "sluice_heartbeat_writes",
            "Heartbeat rows written through this tier, by result (ok, error).",
            labels=["result"],
        )
        writes.add_metric(["ok"], beat.ok)
        writes.add_metric(["error"], beat.failed)
        yield writes
        yield _histogram(
            "sluice_heartbeat_write_seconds",
            "How long each successful heartbeat write took, end to end.",
            beat.latency,
        )
        yield GaugeMetricFamily(
            "sluice_heartbeat_last_success_timestamp_seconds",
            "Unix time of the last successful heartbeat write (0: none yet).",
            value=beat.last_ok,
        )
        lag = GaugeMetricFamily(
            "sluice_heartbeat_replication_lag_seconds",
            "Age of the newest heartbeat row on each database server (monitor account).",
            labels=["server"],
        )
        for server, seconds in sorted(beat.lag.items()):
            if seconds is not None:
                lag.add_metric([server], seconds)
        yield lag

    def _traffic(self) -> Iterator[Metric]:
        stats = self.tier.stats
        statements = CounterMetricFamily(
            "sluice_statements",
            "Client commands relayed to the upstream and answered, by command.",
            labels=["command"],
        )
        failed = CounterMetricFamily(
            "sluice_statement_errors",
            "Client commands the upstream answered with an error, by command.",
            labels=["command"],
        )
        for byte, count in enumerate(stats.statements):
            if count:
                name = COMMAND_NAMES.get(byte, str(byte))
                statements.add_metric([name], count)
                failed.add_metric([name], stats.failed[byte])
        yield statements
        yield failed
        own = CounterMetricFamily(
            "sluice_proxy_errors",
            "Errors sluice itself sent to clients (pool timeouts, no writer, pauses, protocol "
            "violations ...), by MySQL error code.",
            labels=["code"],
        )
        for code, count in sorted(stats.sluice_errors.items()):
            own.add_metric([str(code)], count)
        yield own
        yield _histogram(
            "sluice_statement_duration_seconds",
            "From a client command's arrival to the end of its response (queueing included).",
            stats.duration,
        )
        yield _histogram(
            "sluice_pool_wait_seconds",
            "Time to get a pooled connection when no matching idle one was at hand.",
            stats.pool_wait,
        )
        yield CounterMetricFamily(
            "sluice_client_received_bytes", "Bytes of client commands.", value=stats.bytes_in
        )
        yield CounterMetricFamily(
            "sluice_client_sent_bytes",
            "Bytes of upstream responses relayed to clients.",
            value=stats.bytes_out,
        )

    def _gate_and_switchover(self) -> Iterator[Metric]:
        tier = self.tier
        stats = tier.stats
        yield GaugeMetricFamily(
            "sluice_gate_paused",
            "1 while the write gate is closed (PAUSE, switchover).",
            value=int(tier.gate.closed),
        )
        yield GaugeMetricFamily(
            "sluice_gate_waiting_statements",
            "Client statements waiting for the gate to open.",
            value=tier.gate.queued,
        )
        yield _histogram(
            "sluice_write_pause_seconds",
            "How long each write pause kept new work waiting.",
            stats.pauses,
        )
        yield _histogram(
            "sluice_switchover_duration_seconds",
            "Planned switchovers run by this tier, from request to the end (repoint included).",
            stats.switchover_durations,
        )
        outcomes = CounterMetricFamily(
            "sluice_switchovers",
            "Planned switchovers run by this tier, by outcome (done, aborted, failed).",
            labels=["outcome"],
        )
        for outcome, count in sorted(stats.switchovers.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        writer = GaugeMetricFamily(
            "sluice_upstream_current",
            "1 for the upstream server new work goes to (a remote tier's primary).",
            labels=["server"],
        )
        current = tier.upstream.current
        if tier.config.tier == "remote":
            for server in tier.upstream.servers:
                writer.add_metric([server.name], int(server == current))
        yield writer


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


def tier_registry(tier: Tier) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierCollector(tier))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)
