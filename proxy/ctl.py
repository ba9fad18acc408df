"""`sluice ctl`: drive one tier or a fleet of tiers through their HTTP admin addresses.

A pause is all or none: every tier is asked at once, and if one cannot be paused the others
are resumed again and the command fails. A resume goes to every tier even when some fail, so
that no tier is left paused by accident. Each answer is printed; the exit status says whether
everything succeeded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 60.0  # a pause returns after its drain, which the tier bounds by pause.drain_timeout


class ControlError(Exception):
    pass


def client_context(
    ca: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | None:
    """How sluice ctl (and a tier calling its peers) speaks to HTTPS admin endpoints: their
    certificate verified against `ca` (host name included), with a client certificate if
    given. None: plain HTTP."""
    if ca is None:
        return None
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def call(
    admin: str,
    method: str,
    path: str,
    token: str | None,
    timeout: float = TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> dict:
    """One request to a tier's admin HTTP address; the JSON answer or ControlError.

    With `tls` only HTTPS is spoken (a plain endpoint is refused, never used)."""
    scheme = "https" if tls is not None else "http"
    request = urllib.request.Request(f"{scheme}://{admin}{path}", method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise ControlError(f"{admin}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            hint = (
                "; is it a plain HTTP endpoint? sluice ctl does not fall back to plain text"
                if "WRONG_VERSION_NUMBER" in str(reason) or "record layer" in str(reason)
                else ""
            )
            raise ControlError(f"{admin}: TLS failed: {reason}{hint}") from None
        hint = "" if tls is not None else " (if the endpoint speaks HTTPS, give --ca)"
        raise ControlError(f"{admin}: cannot reach the admin endpoint ({reason}){hint}") from None


TLS: ssl.SSLContext | None = None
"""The context of this `sluice ctl` run (from --ca/--cert/--key), for every call it makes."""


def fan_out(admins: list[str], method: str, path: str, token: str | None) -> dict[str, object]:
    """The same request to every tier at once: admin -> answer or ControlError."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(admins)) as pool:
        futures = {
            admin: pool.submit(call, admin, method, path, token, TIMEOUT, TLS) for admin in admins
        }
        results: dict[str, object] = {}
        for admin, future in futures.items():
            try:
                results[admin] = future.result()
            except ControlError as exc:
                results[admin] = exc
    return results


def failures(results: dict[str, object]) -> list[ControlError]:
    return [r for r in results.values() if isinstance(r, ControlError)]


def status(admins: list[str], token: str | None) -> int:
    results = fan_out(admins, "GET", "/status", token)
    for admin, result in results.items():
        if isinstance(result, ControlError):
            print(f"{admin}: ERROR {result}")
            continue
        gate = result.get("gate", {})
        sessions = result.get("sessions", {})
        print(
            f"{admin}: {result.get('tier')} tier, "
            f"{'PAUSED' if gate.get('paused') else 'serving'}, "
            f"sessions {sessions}, waiting {gate.get('waiting', 0)}"
        )
    return 1 if failures(results) else 0


def pause(admins: list[str], token: str | None) -> int:
    results = fan_out(admins, "POST", "/pause", token)
    failed = failures(results)
    for admin, result in results.items():
        if not isinstance(result, ControlError):
            print(
                f"{admin}: paused (drained in {result['drained_ms']} ms, "
                f"{result['killed']} transactions killed)"
            )
    if not failed:
        return 0
    for error in failed:
        print(f"sluice ctl: pause failed: {error}", file=sys.stderr)
    paused = [a for a, r in results.items() if not isinstance(r, ControlError)]
    if paused:
        print(
            f"sluice ctl: resuming the {len(paused)} tiers already paused (all or none)",
            file=sys.stderr,
        )
        for error in failures(fan_out(paused, "POST", "/resume", token)):
            print(f"sluice ctl: resume failed too: {error}", file=sys.stderr)
    return 1


def resume(admins: list[str], token: str | None) -> int:
    results = fan_out(admins, "POST", "/resume", token)
    for admin, result in results.items():
        if isinstance(result, ControlError):
            print(f"sluice ctl: resume failed: {result}", file=sys.stderr)
        else:
            print(f"{admin}: resumed (paused for {result['paused_ms']} ms)")
    return 1 if failures(results) else 0


SWITCHOVER_TIMEOUT = 300.0
"""A switchover's answer comes when it is over (catch-up, pause, promotion, repointing)."""


def switchover(admins: list[str], token: str | None, target: str) -> int:
    """The first tier runs it and drives the others as its peers (all paused or none)."""
    first, peers = admins[0], admins[1:]
    query = urllib.parse.urlencode([("to", target), *(("peer", p) for p in peers)])
    try:
        record = call(first, "POST", f"/switchover?{query}", token, SWITCHOVER_TIMEOUT, TLS)
    except ControlError as exc:
        print(f"sluice ctl: {exc}", file=sys.stderr)
        return 1
    _print_switchover(record)
    return 0


def _print_switchover(record: dict) -> None:
    print(
        f"switchover {record['id']}: {record['from']} -> {record['to']} {record['outcome']} "
        f"in {record['total_ms']:.0f} ms; clients paused {record['pause_ms']:.0f} ms"
    )
    for step in record.get("steps", []):
        mark = "ok" if step["ok"] else "FAILED"
        print(f"  {step['step']:<20} {step['ms']:>8.1f} ms  {mark}  {step['detail']}")
    for warning in record.get("warnings", []):
        print(f"  warning: {warning}")


def retarget(admins: list[str], token: str | None, target: str) -> int:
    query = urllib.parse.urlencode({"to": target})
    results = fan_out(admins, "POST", f"/retarget?{query}", token)
    for admin, result in results.items():
        if isinstance(result, ControlError):
            print(f"sluice ctl: retarget failed: {result}", file=sys.stderr)
        else:
            print(f"{admin}: new work goes to {result['current']} (was {result['was']})")
    return 1 if failures(results) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser(
        "ctl", help="status, pause, resume, switchover or retarget one tier or a fleet over HTTP"
    )
    ctl.add_argument(
        "--admin",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a tier's admin.http address (repeat for a fleet)",
    )
    ctl.add_argument(
        "--token", default=None, help="admin.token of the tiers (default: $SLUICE_ADMIN_TOKEN)"
    )
    ctl.add_argument(
        "--ca",
        metavar="FILE",
        help="speak HTTPS and verify the tiers' certificates against this CA (admin.tls)",
    )
    ctl.add_argument("--cert", metavar="FILE", help="a client certificate to present (with --ca)")
    ctl.add_argument("--key", metavar="FILE", help="the client certificate's key")
    ctl.add_argument("action", choices=["status", "pause", "resume", "switchover", "retarget"])
    ctl.add_argument(
        "--to",
        metavar="SERVER",
        help="switchover/retarget: the server to make the primary (its name or address)",
    )
    ctl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    global TLS
    token = args.token or os.environ.get("SLUICE_ADMIN_TOKEN")
    if args.cert and not args.ca:
        print("sluice ctl: --cert needs --ca (client certificates go over TLS)", file=sys.stderr)
        return 2
    try:
        TLS = client_context(args.ca, args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        print(f"sluice ctl: cannot use --ca/--cert: {exc}", file=sys.stderr)
        return 2
    if args.action in ("switchover", "retarget"):
        if not args.to:
            print(f"sluice ctl: {args.action} needs --to SERVER", file=sys.stderr)
            return 2
        return (switchover if args.action == "switchover" else retarget)(args.admin, token, args.to)
    action = {"status": status, "pause": pause, "resume": resume}[args.action]
    return action(args.admin, token)
