"""`sluice run` as an operator runs it: a process with a YAML file, SIGHUP, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymysql
import pytest
import yaml

from proxy.config import parse_config

from .harness import TierThread, tier_config
from .test_multiplexing import ConnectionSampler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, sandbox, port: int, cap: int, **extra) -> None:
    data = {
        "tier": "remote",
        "listen": [f"127.0.0.1:{port}"],
        "users": [{"name": "app", "password": sandbox.users["app"].password}],
        "upstream": {
            "servers": [
                {"name": "db1", "address": f"{sandbox.primary.host}:{sandbox.primary.port}"}
            ]
        },
        "pool": {"max_connections": cap},
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"sluice did not listen on {port}")


def test_run_serves_reloads_on_sighup_and_drains_on_sigterm(sandbox, tmp_path):
    port = free_port()
    config = tmp_path / "sluice.yaml"
    write_config(config, sandbox, port, cap=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for_port(port, proc)
        conn = pymysql.connect(
            host="127.0.0.1", port=port, user="app", password=sandbox.users["app"].password
        )
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)

        config.write_text("tier: remote\nlisten: [oops\n")  # a broken file is not applied
        proc.send_signal(signal.SIGHUP)
        write_config(config, sandbox, port, cap=3)
        time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        with conn.cursor() as cur:  # still serving after both
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)

        result: dict[str, object] = {}

        def slow() -> None:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(1), 'drained'")
                result["row"] = cur.fetchone()

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # the running statement still completes
        t.join(10)
        assert result.get("row") == (0, "drained")
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert "config not reloaded, keeping the running one" in err
        assert "config reloaded" in err
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(
                host="127.0.0.1", port=port, user="app", password=sandbox.users["app"].password
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_is_refused_at_start_with_the_key_path(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "tier: remote\nlisten: ['127.0.0.1:1']\nusers: []\nupstream: {servers: []}\n"
        "pool: {max_connections: lots}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 2
    assert "sluice:" in out.stderr and str(config) in out.stderr
    assert any(key in out.stderr for key in ("users", "servers", "max_connections"))


def test_lowering_the_cap_by_reload_closes_connections_down_to_it(sandbox):
    config = tier_config(sandbox, pool={"max_connections": 6, "acquire_timeout": "5s"})
    with TierThread(config) as tier:
        conns = [
            pymysql.connect(
                host="127.0.0.1", port=tier.port, user="app", password=sandbox.users["app"].password
            )
            for _ in range(6)
        ]
        for c in conns:  # six transactions at once: six upstream connections
            c.begin()
            c.cursor().execute("SELECT 1")
        holder = conns[0]
        for c in conns[1:]:
            c.commit()
        assert tier.run(lambda: tier.tier.pools.servers["db1"].open) == 6
        lowered = tier_config(sandbox, pool={"max_connections": 2, "acquire_timeout": "5s"})
        tier.run(lambda: tier.tier.reload(lowered))
        # idle ones close at once; the one still in its transaction stays until released
        assert tier.run(lambda: tier.tier.pools.servers["db1"].open) == 2
        holder.commit()
        with ConnectionSampler(sandbox) as sampler:
            threads = [
                threading.Thread(target=lambda c=c: c.cursor().execute("SELECT SLEEP(0.2)"))
                for c in conns
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        assert sampler.added <= 0  # nothing opened beyond the new cap
        assert tier.run(lambda: tier.tier.pools.servers["db1"].open) <= 2
        for c in conns:
            c.close()


def test_a_user_added_by_reload_can_log_in(sandbox):
    config = tier_config(sandbox)
    with TierThread(config) as tier:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(
                host="127.0.0.1",
                port=tier.port,
                user="root",
                password=sandbox.users["root"].password,
            )
        more = parse_config(
            {
                "tier": "remote",
                "listen": ["127.0.0.1:0"],
                "users": [
                    {"name": "app", "password": sandbox.users["app"].password},
                    {"name": "root", "password": sandbox.users["root"].password},
                ],
                "upstream": {
                    "servers": [
                        {"name": s.name, "address": f"{s.host}:{s.port}"} for s in sandbox.servers
                    ]
                },
            },
            allow_zero_port=True,
        )
        assert tier.run(lambda: tier.tier.reload(more)) == []
        conn = pymysql.connect(
            host="127.0.0.1", port=tier.port, user="root", password=sandbox.users["root"].password
        )
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith("root@")
        conn.close()
