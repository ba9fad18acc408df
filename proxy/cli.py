"""The `sluice` command: run a tier, manage a sandbox cluster, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

from . import ctl
from .config import Config, ConfigError, load_config

log = logging.getLogger("sluice")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def install_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- sluice run ---------------------------------------------------------------------------------


async def serve(config: Config, path: str) -> int:
    from .tier import Tier

    tier = Tier(config, config_path=path)
    await tier.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        try:
            tier.reload(load_config(path))
        except ConfigError as exc:
            log.error("config not reloaded, keeping the running one: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    log.info("stopping: draining client sessions")
    await tier.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    install_uvloop()
    from .tls import TLSConfigError

    try:
        return asyncio.run(serve(config, args.config))
    except TLSConfigError as exc:
        print(f"sluice: {args.config}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


# --- sluice sandbox -----------------------------------------------------------------------------


def cmd_sandbox(args: argparse.Namespace) -> int:
    from . import sandbox

    try:
        if args.action == "up":
            sb = sandbox.up(
                args.dir,
                replicas=args.replicas,
                max_connections=args.max_connections,
                port=args.port,
                semi_sync=args.semi_sync,
                etcd=args.etcd,
            )
            print(json.dumps(sb.to_dict(), indent=2))
        else:
            sandbox.down(args.dir)
            print(json.dumps({"dir": str(Path(args.dir).resolve()), "stopped": True}))
    except sandbox.SandboxError as exc:
        print(f"sluice sandbox: {exc}", file=sys.stderr)
        return 1
    return 0


# --- sluice demo --------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    setup_logging(args.log_level or "warning")
    install_uvloop()
    return asyncio.run(
        run_demo(clients=args.clients, seconds=args.seconds, workdir=args.dir, hosts=args.hosts)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Two-tier MySQL connection-multiplexing proxy."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one tier from a YAML config")
    run.add_argument("-c", "--config", required=True, help="path to the YAML config")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["plain", "json"])
    run.set_defaults(func=cmd_run)

    sb = sub.add_parser("sandbox", help="start or stop a local MariaDB primary + replicas")
    sb_sub = sb.add_subparsers(dest="action", required=True)
    up = sb_sub.add_parser("up", help="start a sandbox cluster and print it as JSON")
    up.add_argument("--dir", required=True, help="directory holding the cluster's data")
    up.add_argument("--replicas", type=int, default=1)
    up.add_argument("--max-connections", type=int, default=151)
    up.add_argument("--port", type=int, default=None, help="first port (default: free ports)")
    up.add_argument(
        "--semi-sync",
        action="store_true",
        help="lossless semi-sync replication (AFTER_SYNC): no acknowledged write is lost",
    )
    up.add_argument(
        "--etcd", action="store_true", help="also an etcd for fleet.etcd (its endpoint: etcd)"
    )
    down = sb_sub.add_parser("down", help="stop a sandbox cluster")
    down.add_argument("--dir", required=True)
    sb.set_defaults(func=cmd_sandbox)

    demo = sub.add_parser("demo", help="run the sluice story on this machine and report")
    demo.add_argument("--clients", type=int, default=1000, help="app connections to open")
    demo.add_argument("--hosts", type=int, default=3, help="app hosts, one local tier each")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long the load runs")
    demo.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=cmd_demo)

    ctl.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
