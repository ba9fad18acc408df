"""What a tier counts while it serves, for /metrics.

Cheap enough for the hot path: one call per statement (not per packet), plain ints in lists
indexed by command byte, and histograms that are a bisect and an increment. No locks (the
tier runs on one event loop), no label lookups; prometheus-client objects are built from these
only when /metrics is scraped (proxy/admin/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left

from .protocol.constants import Command

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: statement duration and pool wait (half a millisecond to ten seconds)."""
PAUSE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: write pauses and switchovers."""

COMMAND_NAMES = {int(c): c.name.lower() for c in Command}


class Histogram:
    """Counts per bucket (upper bounds, as Prometheus' `le`) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) pairs, ending with +Inf, as Prometheus wants them."""
        out = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class TierStats:
    """Since the tier started."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "failed",
        "pauses",
        "pool_wait",
        "sluice_errors",
        "statements",
        "switchover_durations",
        "switchovers",
    )

    def __init__(self) -> None:
        self.statements = [0] * 256  # by command byte
        self.failed = [0] * 256  # answered with the server's ERR, by command byte
        self.duration = Histogram(LATENCY_BUCKETS)  # command received -> response relayed
        self.pool_wait = Histogram(LATENCY_BUCKETS)  # acquiring beyond the idle fast path
        self.bytes_in = 0  # client commands
        self.bytes_out = 0  # responses relayed to clients
        self.sluice_errors: dict[int, int] = {}  # sluice's own ERRs to clients, by error code
        self.pauses = Histogram(PAUSE_BUCKETS)  # how long the write gate was closed
        self.switchover_durations = Histogram(PAUSE_BUCKETS)
        self.switchovers: dict[str, int] = {}  # by outcome

    def statement(self, command: int, seconds: float, failed: bool, size_out: int) -> None:
        self.statements[command] += 1
        if failed:
            self.failed[command] += 1
        duration = self.duration  # (Histogram.observe, inlined: this runs per statement)
        duration.counts[bisect_left(duration.bounds, seconds)] += 1
        duration.sum += seconds
        self.bytes_out += size_out

    def sluice_error(self, code: int) -> None:
        self.sluice_errors[code] = self.sluice_errors.get(code, 0) + 1
