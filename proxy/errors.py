"""Errors sluice itself reports to clients: real MySQL codes, SQLSTATEs, and advice.

Every message starts with "sluice:" (so nobody mistakes it for a database error) and says what
to do about it. Keep the wording here, in one place, so the messages stay consistent.
"""

from __future__ import annotations

from .protocol.constants import ErrorCode
from .protocol.messages import sluice_err_payload


class ClientError(Exception):
    """An error to report to a client as an ERR packet."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self) -> bytes:
        return sluice_err_payload(self.code, self.message)


def access_denied(user: str, host: str, used_password: bool) -> ClientError:
    using = "YES" if used_password else "NO"
    return ClientError(
        ErrorCode.ACCESS_DENIED,
        f"access denied for user '{user}'@'{host}' (using password: {using}); check the user "
        "name and password against the users sluice is configured with",
    )


class UpstreamUnreachable(ClientError):
    """No connection to an upstream server could be made (refused, timed out, broken)."""

    def __init__(self, server: str, message: str, reason: str = "") -> None:
        super().__init__(ErrorCode.CONNECT_TO_FOREIGN_DATA_SOURCE, message)
        self.server = server
        self.reason = reason or message


def upstream_unreachable(server: str, address: str, reason: str) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        server,
        f"cannot connect to upstream '{server}' at {address} ({reason}); check that the "
        "server is up and reachable, then retry",
        reason,
    )


def no_writer(problem: str) -> ClientError:
    return ClientError(
        ErrorCode.OPTION_PREVENTS_STATEMENT,
        f"{problem}; sluice will not guess a primary: make one server writable and not "
        "replicating (sluice checks again every few seconds), then retry",
    )


def upstream_refused(server: str, user: str, detail: str) -> ClientError:
    return ClientError(
        ErrorCode.ACCESS_DENIED,
        f"upstream '{server}' refused user '{user}': {detail}; the user must exist on the "
        "database with the same password as in sluice's users list",
    )


def upstream_lost(server: str) -> ClientError:
    return ClientError(
        ErrorCode.CONNECTION_KILLED,
        f"lost the connection to upstream '{server}' during this command; its session "
        "state and any open transaction are gone: reconnect and retry",
    )


def unsupported_command(command: int) -> ClientError:
    return ClientError(
        ErrorCode.UNKNOWN_COM_ERROR,
        f"command 0x{command:02x} is not supported through sluice; connect to the database "
        "directly for replication or administrative protocol commands",
    )


def packet_too_large(size: int, limit: int) -> ClientError:
    return ClientError(
        ErrorCode.NET_PACKET_TOO_LARGE,
        f"packet of at least {size} bytes is larger than max_packet_size ({limit} bytes); "
        "send smaller statements or raise limits.max_packet_size",
    )


def too_many_clients(limit: int) -> ClientError:
    return ClientError(
        ErrorCode.CON_COUNT_ERROR,
        f"too many client connections (limits.max_clients = {limit}); close idle "
        "connections or raise the limit, then retry",
    )


def handshake_failed(reason: str) -> ClientError:
    return ClientError(
        ErrorCode.HANDSHAKE_ERROR,
        f"bad handshake ({reason}); use a MySQL/MariaDB client speaking protocol 4.1",
    )


def login_timed_out(timeout: float, step: str) -> ClientError:
    return ClientError(
        ErrorCode.HANDSHAKE_ERROR,
        f"login timed out after {timeout:g}s {step} (limits.handshake_timeout); retry, and "
        "check the client's network if this repeats",
    )


def internal_error(what: str) -> ClientError:
    return ClientError(
        ErrorCode.UNKNOWN_ERROR,
        f"internal error ({what}) while handling this session; it was closed and nothing it "
        "held was reused: reconnect and retry (the tier's log has the details)",
    )


def secure_transport_required() -> ClientError:
    return ClientError(
        ErrorCode.SECURE_TRANSPORT_REQUIRED,
        "this listener requires TLS (tls.mode: required): connect with TLS (e.g. "
        "--ssl-mode=REQUIRED, ssl={'ca': …}), or through the tier's unix socket",
    )


def upstream_tls_failed(server: str, address: str, reason: str) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        server,
        f"TLS to upstream '{server}' at {address} failed: {reason}; check upstream.tls (its "
        "ca, and the name in the server's certificate for verify_identity); sluice never "
        "falls back to plain text",
        f"TLS failed: {reason}",
    )


def upstream_tls_missing(server: str, address: str, mode: str) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        server,
        f"upstream '{server}' at {address} does not offer TLS and upstream.tls.mode is {mode}; "
        "enable TLS on the server, or lower the mode (preferred uses TLS when offered)",
        "no TLS offered",
    )


def auth_plugin_unsupported(server: str, plugin: str, detail: str) -> ClientError:
    return ClientError(
        ErrorCode.NOT_SUPPORTED_AUTH_MODE,
        f"upstream '{server}' asked for auth plugin '{plugin}': {detail}",
    )


def shutting_down() -> ClientError:
    return ClientError(
        ErrorCode.SERVER_SHUTDOWN,
        "this sluice tier is shutting down; reconnect to reach another tier",
    )


def unknown_statement(stmt_id: int) -> ClientError:
    return ClientError(
        ErrorCode.UNKNOWN_STMT_HANDLER,
        f"unknown prepared statement id {stmt_id} (it was closed, or never prepared on this "
        "session); prepare it again",
    )


def unknown_thread(thread_id: int) -> ClientError:
    return ClientError(
        ErrorCode.NO_SUCH_THREAD,
        f"unknown thread id: {thread_id}; through sluice, KILL takes the connection id the "
        "client got in its handshake (the driver's thread_id()), not CONNECTION_ID()",
    )


def kill_not_alone() -> ClientError:
    return ClientError(
        ErrorCode.NOT_SUPPORTED_YET,
        "this KILL is not carried out through sluice: send KILL [CONNECTION|QUERY] <id> as a "
        "statement of its own, with the id of a client's handshake (or one SHOW PROCESSLIST "
        "shows). On the database, any other KILL (in a multi-statement, of a USER, a QUERY ID, "
        "HARD or SOFT) would reach the pooled connections of other clients",
    )


def not_thread_owner(thread_id: int) -> ClientError:
    return ClientError(
        ErrorCode.KILL_DENIED,
        f"you are not owner of thread {thread_id}; only sessions of the same user can be "
        "killed through sluice",
    )
