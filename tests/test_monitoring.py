"""deploy/monitoring: the alert rules and the Grafana dashboard only use metrics sluice
really exports (scraped here from running tiers), and the paging rules are there."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .harness import TierThread, heartbeat_section, monitored_upstream, tier_config

MONITORING = Path(__file__).parent.parent / "deploy" / "monitoring"
METRIC_RE = re.compile(r"\bsluice_[a-z_]+")


def exported_names(tier: TierThread) -> set[str]:
    address = tier.run(lambda: tier.tier.admin_addresses()["http"])
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):  # with or without samples yet
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def referenced(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


def test_alerts_and_dashboard_use_only_metrics_sluice_exports(sandbox):
    remote = TierThread(
        tier_config(
            sandbox,
            upstream=monitored_upstream(sandbox),
            admin={"http": "127.0.0.1:0"},
            heartbeat=heartbeat_section(sandbox),
        )
    ).start()
    try:
        deadline = time.monotonic() + 10
        while remote.run(lambda: remote.tier.heartbeat.ok) < 2 or not remote.run(
            lambda: any(v is not None for v in remote.tier.heartbeat.lag.values())
        ):
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        names = exported_names(remote)
    finally:
        remote.stop()

    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]
    missing = set().union(*(referenced(e) for e in exprs)) - names
    assert not missing, f"not exported by sluice: {sorted(missing)}"
    assert len(exprs) > 20


def test_alert_rules_are_complete_and_the_heartbeat_pages():
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "warning", "info")
        assert rule["annotations"]["summary"]
    by_name = {rule["alert"]: rule for rule in rules}
    heartbeat = by_name["SluiceHeartbeatFailing"]
    assert heartbeat["labels"]["severity"] == "page"
    assert "> 30" in heartbeat["expr"]
    warned = {r["alert"] for r in rules if r["labels"]["severity"] == "warning"}
    assert {"SluicePoolWaits", "SluiceProxyErrors", "SluiceStatementErrors"} <= warned
