"""A client's way in: the greeting, the TLS upgrade, the authentication plugin exchange, and
the authentication of COM_CHANGE_USER.

The command loop (proxy/frontend.py) starts from what this returns: the client's handshake
response and the credential sluice logs in upstream with. The plugin exchanges themselves are
sans-I/O (proxy/protocol/plugins.py); this module drives them over the session's connection:
framing, sequence ids, the switch to another plugin, the failed-login slow-down.

Which plugin: the greeting offers `auth.default_plugin`. A client that answers with another
plugin sluice speaks is served in that one (a MySQL 9 client has no mysql_native_password,
so it is never switched to it); one that answers with a plugin sluice does not speak is
switched to the default.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import errors
from .protocol import capabilities
from .protocol.auth import new_scramble
from .protocol.codec import ProtocolError
from .protocol.constants import CACHING_SHA2_PASSWORD, NATIVE_PASSWORD, Capability, Status
from .protocol.framing import frame
from .protocol.handshake import AuthSwitchRequest, ChangeUser, Greeting, HandshakeResponse
from .protocol.plugins import (
    PLUGINS,
    CachingSha2Exchange,
    Denied,
    NativeExchange,
    Send,
    Verified,
)

if TYPE_CHECKING:
    from .frontend import ClientSession
    from .users import Credential

log = logging.getLogger("sluice.login")

_SSL = int(Capability.SSL)
_PLUGIN_AUTH = int(Capability.PLUGIN_AUTH)
SSL_REQUEST_LENGTH = 32


def is_ssl_request(payload: bytes) -> bool:
    """A HandshakeResponse cut after its fixed part, with CLIENT_SSL: TLS starts now."""
    return len(payload) == SSL_REQUEST_LENGTH and bool((payload[0] | payload[1] << 8) & _SSL)


class Login:
    """Drives one session's connection phase (and its change-user authentications)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.tier = session.tier

    # --- the connection phase ------------------------------------------------------------------

    async def handshake(self) -> tuple[HandshakeResponse, Credential]:
        """Greet, upgrade to TLS if the client asks, authenticate; the caller logs in."""
        session = self.session
        tier = self.tier
        try:
            upstream = await tier.upstream.server_greeting()
        except errors.ClientError:
            session._reply_seq = 0  # no greeting was sent: the error takes its place
            raise
        session.scramble = new_scramble()
        offered = capabilities.offer(upstream.capabilities)
        context = tier.tls_context if session.peer != "unix" else None
        if context is not None:
            offered |= _SSL
        greeting = Greeting(
            upstream.server_version,
            session.id,
            session.scramble,
            offered,
            upstream.charset,
            Status.AUTOCOMMIT,
            tier.config.auth.default_plugin,
        )
        session.send(frame(0, greeting.payload()))
        session._step = "waiting for the client's handshake response"
        msg = await session.next_message()
        if is_ssl_request(msg.payload):
            if context is None:
                raise ProtocolError("client asked for TLS, which this listener does not offer")
            session.start_tls(context)
            session._step = "waiting for the client's TLS handshake and handshake response"
            msg = await session.next_message()
        elif session.peer != "unix" and tier.tls_required:
            session._reply_seq = msg.last_seq + 1
            raise errors.secure_transport_required()
        session._reply_seq = msg.last_seq + 1
        response = parse_client_message(HandshakeResponse.parse, msg.payload)
        session.user = response.user
        session.capabilities = int(response.capabilities) & offered & ~_SSL
        plugin = response.auth_plugin if response.capabilities & _PLUGIN_AUTH else NATIVE_PASSWORD
        credential = await self.authenticate(response.user, plugin, response.auth_response)
        return response, credential

    async def change_user(self, request: ChangeUser) -> Credential:
        """COM_CHANGE_USER's authentication (same scramble as the login, as the server does)."""
        plugin = request.auth_plugin if self.session.capabilities & _PLUGIN_AUTH else None
        return await self.authenticate(
            request.user, plugin or NATIVE_PASSWORD, request.auth_response
        )

    # --- the plugin exchange -------------------------------------------------------------------

    async def authenticate(self, user: str, plugin: str | None, data: bytes) -> Credential:
        """Run the exchange for `user` whose first answer, `data`, is for `plugin`."""
        session = self.session
        tier = self.tier
        account = tier.users.account(user)
        chosen = plugin if plugin in PLUGINS else tier.config.auth.default_plugin
        if chosen == CACHING_SHA2_PASSWORD:
            key, pem = tier.rsa_key()
            exchange: NativeExchange | CachingSha2Exchange = CachingSha2Exchange(
                session.scramble, account, secure=session.secure, rsa_key=key, public_key_pem=pem
            )
        else:
            exchange = NativeExchange(session.scramble, account)
        if plugin != chosen or (chosen == NATIVE_PASSWORD and len(data) not in (0, 20)):
            # The client answered for another plugin (or another scramble): ask again.
            session.send(
                frame(session._reply_seq, AuthSwitchRequest(chosen, session.scramble).payload())
            )
            session._step = f"waiting for the client's answer to the switch to {chosen}"
            data = await self._next_payload()
        steps = exchange.receive(data)
        while True:
            for step in steps:
                if isinstance(step, Send):
                    session.send(frame(session._reply_seq, step.payload))
                    session._reply_seq += 1
                elif isinstance(step, Verified):
                    tier.failure_delays.succeeded(session.source)
                    return tier.users.learn(user, step.secrets)
                else:
                    assert isinstance(step, Denied)
                    await self._denied(user, step)
            session._step = f"waiting for the client's {exchange.plugin} answer"
            steps = exchange.receive(await self._next_payload())

    async def _next_payload(self) -> bytes:
        """The client's next auth packet (its sequence id sets the reply's)."""
        session = self.session
        msg = await session.next_message()
        session._reply_seq = msg.last_seq + 1
        return msg.payload

    async def _denied(self, user: str, step: Denied) -> None:
        session = self.session
        tier = self.tier
        tier.auth_failures += 1
        delay = tier.failure_delays.failed(session.source)
        log.info(
            "client %s (%s): login of '%s' refused (%s)%s",
            session.id,
            session.peer,
            user,
            step.reason,
            f"; answering in {delay:g}s (auth.failure_delay)" if delay else "",
        )
        if delay:
            session.answered_late()  # the login is over, only its answer waits
            await asyncio.sleep(delay)
        raise errors.access_denied(user, session.source, step.used_password)


def parse_client_message(parse, payload: bytes, *args):  # type: ignore[no-untyped-def]
    """A client's connection-phase message, or ProtocolError: whatever a parser raises on
    bytes it did not foresee is a malformed message (1043), not a dead session."""
    try:
        return parse(payload, *args)
    except ProtocolError:
        raise
    except Exception as exc:
        log.error("parser %s failed on client bytes", parse.__qualname__, exc_info=exc)
        raise ProtocolError(f"malformed message ({type(exc).__name__})") from exc
