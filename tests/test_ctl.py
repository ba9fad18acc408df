"""POST /pause and /resume with the token, and `sluice ctl` driving a fleet of tiers."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .harness import TierThread, app_connection, scalar, tier_config
from .test_gate import Background

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parent.parent


def admin_tier(sandbox, token: str | None = TOKEN) -> TierThread:
    admin = {"http": "127.0.0.1:0"}
    if token:
        admin["token"] = token
    return TierThread(tier_config(sandbox, admin=admin)).start()


def http_address(tier: TierThread) -> str:
    return tier.run(lambda: tier.tier.admin_addresses()["http"])


def post(tier: TierThread, path: str, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{http_address(tier)}{path}", data=b"", method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_post_controls_need_the_token(sandbox):
    tier = admin_tier(sandbox)
    try:
        status, body = post(tier, "/pause", None)
        assert status == 401 and "Bearer" in body["error"]
        status, _ = post(tier, "/pause", "wrong")
        assert status == 401
        assert not tier.run(lambda: tier.tier.gate.closed)
        status, body = post(tier, "/pause", TOKEN)
        assert status == 200 and body["paused"] is True and body["killed"] == 0
        assert tier.run(lambda: tier.tier.gate.closed)
        status, body = post(tier, "/resume", TOKEN)
        assert status == 200 and body["resumed"] is True
        with pytest.raises(urllib.error.HTTPError) as info:  # GET on a control: 405
            urllib.request.urlopen(f"http://{http_address(tier)}/pause", timeout=5)
        assert info.value.code == 405
    finally:
        tier.stop()


def test_post_controls_are_off_without_a_configured_token(sandbox):
    tier = admin_tier(sandbox, token=None)
    try:
        status, body = post(tier, "/pause", "anything")
        assert status == 403 and "admin.token" in body["error"]
    finally:
        tier.stop()


def test_ctl_pauses_and_resumes_a_fleet(sandbox):
    fleet = [admin_tier(sandbox) for _ in range(2)]
    try:
        args = [a for t in fleet for a in ("--admin", http_address(t))]
        client = app_connection(fleet[1], sandbox)  # connecting sends a statement itself
        assert scalar(client, "SELECT 1") == 1
        out = ctl(*args, "--token", TOKEN, "pause")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("paused (drained in") == 2
        assert all(t.run(lambda t=t: t.tier.gate.closed) for t in fleet)
        waiting = Background(lambda: scalar(client, "SELECT 'after resume'"))
        assert not waiting.done.wait(0.5)
        status = ctl(*args, "--token", TOKEN, "status")
        assert status.returncode == 0 and status.stdout.count("PAUSED") == 2
        out = ctl(*args, "resume", env={"SLUICE_ADMIN_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert waiting.done.wait(5) and waiting.result == "after resume"
        client.close()
    finally:
        for t in fleet:
            t.stop()


def test_ctl_pause_is_all_or_none(sandbox):
    healthy = admin_tier(sandbox)
    try:
        out = ctl(
            "--admin", http_address(healthy), "--admin", "127.0.0.1:1", "--token", TOKEN, "pause"
        )
        assert out.returncode != 0
        assert "127.0.0.1:1: cannot reach the admin endpoint" in out.stderr
        assert "resuming the 1 tiers already paused (all or none)" in out.stderr
        assert not healthy.run(lambda: healthy.tier.gate.closed)
        wrong = ctl("--admin", http_address(healthy), "--token", "nope", "pause")
        assert wrong.returncode != 0 and "HTTP 401" in wrong.stderr
    finally:
        healthy.stop()
