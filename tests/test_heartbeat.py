"""The heartbeat: a row written through the tiers every interval, its age read on every
database server, and what it measured on /metrics and /status."""

from __future__ import annotations

import json
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .harness import TierThread, heartbeat_section, monitored_upstream, tier_config


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def scrape(tier: TierThread) -> dict:
    address = tier.run(lambda: tier.tier.admin_addresses()["http"])
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_heartbeat_through_both_tiers_and_its_lag_on_every_server(sandbox):
    remote = TierThread(
        tier_config(
            sandbox, upstream=monitored_upstream(sandbox), heartbeat=heartbeat_section(sandbox)
        )
    ).start()
    local = TierThread(
        tier_config(
            sandbox,
            tier="local",
            upstream={"servers": [{"name": "remote1", "address": f"127.0.0.1:{remote.port}"}]},
            heartbeat={**heartbeat_section(sandbox), "id": "app-host-1"},
            admin={"http": "127.0.0.1:0"},
        )
    ).start()
    try:
        wait_for(lambda: local.run(lambda: local.tier.heartbeat.ok) >= 5)
        # The remote tier sees the newest row (whoever wrote it) on the primary and replica.
        wait_for(
            lambda: (
                len(
                    [
                        v
                        for v in remote.run(lambda: remote.tier.heartbeat.lag).values()
                        if v is not None
                    ]
                )
                == 2
            )
        )
        lag = remote.run(lambda: dict(remote.tier.heartbeat.lag))
        assert all(0 <= seconds < 5 for seconds in lag.values()), lag
        rows = sandbox_rows(sandbox)
        assert "app-host-1" in rows  # written through local -> remote -> primary

        samples = scrape(local)
        assert samples[("sluice_heartbeat_writes_total", (("result", "ok"),))] >= 5
        assert samples[("sluice_heartbeat_writes_total", (("result", "error"),))] == 0
        assert samples[("sluice_heartbeat_write_seconds_count", ())] >= 5
        assert time.time() - samples[("sluice_heartbeat_last_success_timestamp_seconds", ())] < 5

        # The remote tier goes away: heartbeat writes through the local tier fail, and say so.
        remote.stop()
        wait_for(lambda: local.run(lambda: local.tier.heartbeat.failed) >= 2)
        address = local.run(lambda: local.tier.admin_addresses()["http"])
        with urllib.request.urlopen(f"http://{address}/status", timeout=10) as response:
            beat = json.loads(response.read())["heartbeat"]
        assert beat["writes_failed"] >= 2 and beat["last_error"]
        assert "remote1" in beat["last_error"]
    finally:
        local.stop()
        if remote.loop.is_running():
            remote.stop()


def sandbox_rows(sandbox) -> set[str]:
    from proxy import sandbox as sandbox_mod

    return {row[0] for row in sandbox_mod.sql(sandbox.primary, "SELECT id FROM sluice.heartbeat")}
