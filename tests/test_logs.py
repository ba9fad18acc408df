"""Storm-prone log lines are folded: one per kind per interval, with the count."""

from __future__ import annotations

import logging

from proxy.logs import Throttled


def test_a_storm_of_one_event_logs_one_line_then_says_how_many_were_folded(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("proxy.logs.time.monotonic", lambda: now[0])
    throttled = Throttled(logging.getLogger("sluice.test"), every=1.0)
    with caplog.at_level(logging.INFO, logger="sluice.test"):
        for _ in range(500):
            throttled.log(logging.WARNING, "db1", "pool exhausted on %s", "db1")
        throttled.log(logging.WARNING, "db2", "pool exhausted on %s", "db2")  # another kind
        now[0] += 1.5
        throttled.log(logging.WARNING, "db1", "pool exhausted on %s", "db1")
    assert [r.getMessage() for r in caplog.records] == [
        "pool exhausted on db1",
        "pool exhausted on db2",
        "pool exhausted on db1 (and 499 more like it since the last line)",
    ]
