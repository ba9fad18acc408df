"""The container image, proven: run it under podman against a sandbox MariaDB, send a query
through it, reload it, stop it gracefully.

    sudo .venv/bin/python bench/container.py [--build] [--image sluice:0.1.0]

--build (or a missing image) runs deploy/image/build.sh first. The container uses the
host's network namespace and 127.0.0.1 only, with its config mounted read-only from a temp
dir. Each step is checked (a failure exits non-zero and says which) and timed; the record
goes to bench/results/container.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pymysql
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import sandbox  # noqa: E402

NAME = "sluice-bench-container"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        sys.exit(f"container: podman {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


LAYOUT = (
    "id; stat -c '%n %U:%G %a' /etc/sluice /run/sluice /opt/sluice/venv; "
    "readlink /usr/local/bin/sluice; /opt/sluice/venv/bin/python -V; "
    "ls /opt/sluice/venv/lib/python3*/site-packages | sed 's/-[0-9].*//' | sort -u; "
    "for tool in gcc cc pip pip3 pytest; do command -v $tool; done; true"
)


def layout(image: str) -> str:
    """What a user of the image relies on: its user, paths, packages and entrypoint."""
    config = podman(
        "image", "inspect", "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} "
        "{{json .Config.ExposedPorts}}",
        image,
    )  # fmt: skip
    inside = subprocess.run(
        ["podman", *RUNTIME, "run", "--rm", *LIMITS, "--entrypoint", "/bin/sh", image,
         "-c", LAYOUT],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return config + "\n" + inside.stdout + inside.stderr


RUNTIME: list[str] = []
LIMITS: list[str] = []


def detect_quirks(image: str) -> str | None:
    """Inside some sandboxes (this project's development machines among them) a container
    may not raise its limits, and crun cannot use their cgroup v1: then use runc and limits
    the container may set. Returns what was changed, or None."""
    probe = ["run", "--rm", "--network", "host", "--entrypoint", "/bin/true", image]
    done = subprocess.run(["podman", *probe], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    if not any(word in done.stderr for word in ("rlimit", "cgroups in hybrid mode")):
        sys.exit(f"container: podman cannot run {image}: {done.stderr.strip()}")
    nofile = hard_nofile()
    LIMITS[:] = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    RUNTIME[:] = ["--runtime", "runc"] if shutil.which("runc") else []
    again = subprocess.run(
        ["podman", *RUNTIME, probe[0], *LIMITS, *probe[1:]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if again.returncode != 0:
        sys.exit(f"container: podman cannot run {image}: {again.stderr.strip()}")
    return " ".join(RUNTIME + LIMITS)


def hard_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def wait_ready(url: str, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"container: {url} not ready after {timeout}s; its log:\n{logs()}")


def logs() -> str:
    """The container's output (sluice logs to stderr, which podman logs gives on stderr)."""
    done = subprocess.run(
        ["podman", "logs", NAME], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout + done.stderr


def main() -> int:
    version = next(
        line.split('"')[1]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.startswith("version = ")
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=f"sluice:{version}")
    parser.add_argument("--build", action="store_true", help="build the image first")
    parser.add_argument(
        "--compare",
        metavar="IMAGE",
        help="check that IMAGE (say, from the Dockerfile) has "
        "the same layout, user and entrypoint as --image",
    )
    args = parser.parse_args()
    if shutil.which("podman") is None:
        print("container: podman is missing (apt-get install podman); nothing measured")
        return 0
    record: dict[str, object] = {"image": args.image}
    exists = subprocess.run(["podman", "image", "exists", args.image], check=False)
    if args.build or exists.returncode != 0:
        began = time.monotonic()
        subprocess.run([str(ROOT / "deploy/image/build.sh"), args.image], check=True)
        record["build_seconds"] = round(time.monotonic() - began, 1)
    record["image_size_mb"] = round(
        int(podman("image", "inspect", "--format", "{{.Size}}", args.image)) / 1e6, 1
    )
    workaround = detect_quirks(args.image)
    if workaround:
        print(f"container: podman here needs {workaround}")
        record["podman_workarounds"] = workaround
    if args.compare:
        mine, theirs = layout(args.image), layout(args.compare)
        if mine != theirs:
            sys.exit(f"container: {args.image} and {args.compare} differ:\n{mine}\n---\n{theirs}")
        record["same_layout_as"] = args.compare
    work = Path(tempfile.mkdtemp(prefix="sluice-container-", dir="/tmp"))
    sb = sandbox.up(work / "db", replicas=0)
    podman("rm", "-f", NAME, check=False)
    try:
        port, http = free_port(), free_port()
        config = {
            "tier": "remote",
            "listen": [f"127.0.0.1:{port}"],
            "admin": {"http": f"127.0.0.1:{http}", "token": "bench-token"},
            "users": [{"name": "app", "password_file": "/etc/sluice/secrets/app"}],
            "upstream": {"servers": [{"name": "db1", "address": f"127.0.0.1:{sb.primary.port}"}]},
            "pool": {"max_connections": 4},
        }
        conf = work / "conf"
        (conf / "secrets").mkdir(parents=True)
        (conf / "secrets/app").write_text(sb.users["app"].password + "\n")
        (conf / "sluice.yaml").write_text(yaml.safe_dump(config))
        conf.chmod(0o755)
        for path in (conf / "secrets", conf / "secrets/app", conf / "sluice.yaml"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        run = [
            "run", "-d", "--name", NAME, "--network", "host", "--read-only",
            "-v", f"{conf}/sluice.yaml:/etc/sluice/sluice.yaml:ro",
            "-v", f"{conf}/secrets:/etc/sluice/secrets:ro",
        ]  # fmt: skip
        podman(*RUNTIME, run[0], *LIMITS, *run[1:], args.image)
        record["ready_seconds"] = round(wait_ready(f"http://127.0.0.1:{http}/readyz", 30), 2)
        record["user"] = podman("exec", NAME, "id", "-u")
        if record["user"] != "10001":
            sys.exit(f"container: sluice runs as uid {record['user']}, expected 10001")
        conn = pymysql.connect(
            host="127.0.0.1", port=port, user="app", password=sb.users["app"].password
        )
        with conn.cursor() as cur:
            cur.execute("SELECT @@hostname IS NOT NULL, 40 + 2")
            record["query"] = list(cur.fetchone())
        if record["query"] != [1, 42]:
            sys.exit(f"container: the query through it answered {record['query']}")

        config["pool"]["max_connections"] = 6  # a reload applies the new cap at once
        (conf / "sluice.yaml").write_text(yaml.safe_dump(config))
        podman("kill", "--signal", "HUP", NAME)
        deadline = time.monotonic() + 10
        while "config reloaded" not in logs():
            if time.monotonic() > deadline:
                sys.exit("container: no 'config reloaded' in its log 10 s after SIGHUP")
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/status", timeout=5) as response:
            status = json.load(response)
        record["reloaded"] = True
        record["status_pool_cap"] = [s.get("limit") for s in status.get("servers", [])] or None
        with conn.cursor() as cur:  # the session survived the reload
            cur.execute("SELECT 1")
            record["session_after_reload"] = cur.fetchone()[0] == 1

        # A graceful stop: a statement running when SIGTERM comes finishes and is answered.
        answer: list[object] = []

        def sleeper() -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT SLEEP(1.5), 'finished'")
                    answer.append(cur.fetchone()[1])
            except Exception as exc:  # reported below
                answer.append(exc)

        thread = threading.Thread(target=sleeper)
        thread.start()
        time.sleep(0.5)
        began = time.monotonic()
        podman("stop", "--time", "30", NAME, timeout=60)
        record["stop_seconds"] = round(time.monotonic() - began, 2)
        thread.join(10)
        record["statement_running_at_stop"] = answer[0] if answer else "no answer"
        if answer != ["finished"]:
            sys.exit(f"container: the statement running at SIGTERM got {answer}")
        conn.close()
        record["exit_code"] = int(podman("inspect", "--format", "{{.State.ExitCode}}", NAME))
        output = logs()
        record["log_tail"] = output.splitlines()[-3:]
        if record["exit_code"] != 0:
            sys.exit(f"container: exit code {record['exit_code']} after SIGTERM:\n{output}")
    finally:
        podman("rm", "-f", NAME, check=False)
        sandbox.down(work / "db")
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench/results/container.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for key, value in record.items():
        print(f"  {key:22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
