"""The client side of a SOCKS5 CONNECT handshake as a sans-IO state machine.

This module owns the SOCKS5 handshake states, their transition table, the
bytes of every request (RFC 1928 greeting and CONNECT, RFC 1929
username/password) and the parsing of every reply. It does no I/O and never
reads the time (layer L1): the transport feeds it the bytes it received and
sends the bytes it hands out (``nexus_green.transport.socks5`` is the driver).

States (:class:`Socks5State`) and the one table that moves between them::

    IDLE --initiate()--> AWAIT_METHOD --no-auth chosen--> AWAIT_REPLY --success--> CONNECTED
                                     \\--user/pass chosen--> AWAIT_AUTH --accepted--/
    any AWAIT_* state --bad or failed reply--> FAILED

Every failure is a :class:`~nexus_green.errors.ProxyError` whose ``reason``
names it: the reply codes of RFC 1928 (``general_failure``, ``not_allowed``,
``network_unreachable``, ``host_unreachable``, ``connection_refused``,
``ttl_expired``, ``command_not_supported``, ``address_type_not_supported``),
plus ``auth_rejected`` (RFC 1929 status not 0), ``no_acceptable_methods``
(the proxy answered method 0xFF) and ``malformed_reply`` (a reply that breaks
the RFC, including an unassigned reply code 0x09-0xFF).

The reader never needs more bytes than the current reply holds:
:meth:`Socks5Handshake.bytes_needed` says how many to ``recv`` so a driver
never reads tunnel data by mistake. Bytes that do arrive after the CONNECT
reply are kept in :attr:`Socks5Handshake.trailing_data`.

Example (a proxy that wants no authentication)::

    >>> hs = Socks5Handshake(target_host="example.com", target_port=443)
    >>> hs.initiate()                       # greeting: version 5, 1 method, no-auth
    b'\\x05\\x01\\x00'
    >>> hs.receive_data(b"\\x05\\x00")        # proxy picks no-auth
    [MethodSelected(method=0)]
    >>> hs.data_to_send()                   # CONNECT example.com:443 by name
    b'\\x05\\x01\\x00\\x03\\x0bexample.com\\x01\\xbb'
    >>> hs.receive_data(b"\\x05\\x00\\x00\\x01\\x7f\\x00\\x00\\x01\\x04\\x38")
    [TunnelEstablished(bound_host='127.0.0.1', bound_port=1080)]
    >>> hs.state
    <Socks5State.CONNECTED: 'CONNECTED'>
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import ConfigurationError, LocalProtocolError, ProxyError

__all__ = [
    "SOCKS_VERSION",
    "METHOD_NO_AUTH",
    "METHOD_USERNAME_PASSWORD",
    "METHOD_NO_ACCEPTABLE",
    "REPLY_REASONS",
    "Socks5State",
    "MethodSelected",
    "AuthSucceeded",
    "TunnelEstablished",
    "Socks5Event",
    "Socks5Handshake",
    "encode_address",
]

SOCKS_VERSION = 0x05
AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version
METHOD_NO_AUTH = 0x00
METHOD_GSSAPI = 0x01
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

#: RFC 1928 reply codes -> ``ProxyError.reason``. Code 0 is success.
REPLY_REASONS: dict[int, str] = {
    0x01: "general_failure",
    0x02: "not_allowed",
    0x03: "network_unreachable",
    0x04: "host_unreachable",
    0x05: "connection_refused",
    0x06: "ttl_expired",
    0x07: "command_not_supported",
    0x08: "address_type_not_supported",
}

_REPLY_TEXT: dict[int, str] = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

# Failures where another attempt through the same proxy cannot help.
_NOT_RETRYABLE = frozenset(
    {
        "not_allowed",
        "command_not_supported",
        "address_type_not_supported",
        "auth_rejected",
        "no_acceptable_methods",
        "malformed_reply",
    }
)

_METHOD_NAMES: dict[int, str] = {
    METHOD_NO_AUTH: "no authentication",
    METHOD_GSSAPI: "GSSAPI",
    METHOD_USERNAME_PASSWORD: "username/password",
}


class Socks5State(enum.Enum):
    """Where the handshake is. ``CONNECTED`` and ``FAILED`` are final."""

    IDLE = "IDLE"
    AWAIT_METHOD = "AWAIT_METHOD"
    AWAIT_AUTH = "AWAIT_AUTH"
    AWAIT_REPLY = "AWAIT_REPLY"
    CONNECTED = "CONNECTED"
    FAILED = "FAILED"


# The whole lifecycle in one table: (state, trigger) -> next state. Every
# transition goes through Socks5Handshake._transition, which refuses anything
# not listed here.
_TRANSITIONS: dict[tuple[Socks5State, str], Socks5State] = {
    (Socks5State.IDLE, "initiate"): Socks5State.AWAIT_METHOD,
    (Socks5State.AWAIT_METHOD, "method_no_auth"): Socks5State.AWAIT_REPLY,
    (Socks5State.AWAIT_METHOD, "method_userpass"): Socks5State.AWAIT_AUTH,
    (Socks5State.AWAIT_AUTH, "auth_ok"): Socks5State.AWAIT_REPLY,
    (Socks5State.AWAIT_REPLY, "reply_ok"): Socks5State.CONNECTED,
    (Socks5State.AWAIT_METHOD, "fail"): Socks5State.FAILED,
    (Socks5State.AWAIT_AUTH, "fail"): Socks5State.FAILED,
    (Socks5State.AWAIT_REPLY, "fail"): Socks5State.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSelected:
    """The proxy chose an authentication ``method`` (0 no-auth, 2 username/password).

    Example::

        >>> MethodSelected(method=METHOD_USERNAME_PASSWORD).method
        2
    """

    method: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSucceeded:
    """The proxy accepted the username and password (RFC 1929 status 0).

    Example::

        >>> AuthSucceeded()
        AuthSucceeded()
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelEstablished:
    """The CONNECT succeeded; ``bound_host``/``bound_port`` is the proxy's outgoing address.

    Example::

        >>> TunnelEstablished(bound_host="10.0.0.1", bound_port=5000).bound_port
        5000
    """

    bound_host: str
    bound_port: int


Socks5Event = Union[MethodSelected, AuthSucceeded, TunnelEstablished]


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def encode_address(host: str, port: int, *, remote_dns: bool = True) -> bytes:
    """Encode ``ATYP | DST.ADDR | DST.PORT`` of a SOCKS5 request.

    IP literals (IPv6 with or without brackets) are always sent as addresses.
    A host name is sent as a domain (IDNA-encoded) when ``remote_dns`` is true,
    so the proxy resolves it; with ``remote_dns=False`` the caller must have
    resolved it already, and a name is a :class:`ConfigurationError`.

    Example::

        >>> encode_address("10.1.2.3", 80)
        b'\\x01\\n\\x01\\x02\\x03\\x00P'
        >>> encode_address("[::1]", 1)[:1], len(encode_address("::1", 1))
        (b'\\x04', 19)
        >>> encode_address("db.local", 5432)
        b'\\x03\\x08db.local\\x158'
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ConfigurationError(f"SOCKS5 target port must be an integer in 1..65535, not {port!r}")
    if not host:
        raise ConfigurationError("SOCKS5 target host is empty")
    port_bytes = port.to_bytes(2, "big")
    try:
        ip = ipaddress.ip_address(_strip_brackets(host))
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes([ATYP_IPV4]) + ip.packed + port_bytes
    if isinstance(ip, ipaddress.IPv6Address):
        return bytes([ATYP_IPV6]) + ip.packed + port_bytes
    if not remote_dns:
        raise ConfigurationError(
            f"SOCKS5 target {host!r} is a host name but remote_dns=False: resolve it first "
            "and pass the IP address, or use remote_dns=True to let the proxy resolve it"
        )
    try:
        name = host.encode("idna")
    except UnicodeError as e:
        raise ConfigurationError(f"SOCKS5 target host {host!r} is not a valid host name: {e}") from e
    if len(name) > 255:
        raise ConfigurationError(f"SOCKS5 target host name is {len(name)} bytes long; the protocol allows 255")
    return bytes([ATYP_DOMAIN, len(name)]) + name + port_bytes


def _credential(value: str, what: str, *, min_len: int) -> bytes:
    raw = value.encode("utf-8")
    if not min_len <= len(raw) <= 255:
        raise ConfigurationError(f"SOCKS5 {what} must be {min_len}..255 bytes in UTF-8, not {len(raw)}")
    return raw


class Socks5Handshake:
    """Client side of one SOCKS5 CONNECT handshake (RFC 1928, RFC 1929).

    Drive it like h11: call :meth:`initiate` and send what it returns; then
    loop ``recv(hs.bytes_needed())`` -> :meth:`receive_data` -> send
    :meth:`data_to_send` until :attr:`state` is ``CONNECTED``. A bad or failed
    reply raises :class:`~nexus_green.errors.ProxyError` (``reason`` names it)
    and leaves the machine in ``FAILED``; calling a method in a state where it
    makes no sense raises :class:`~nexus_green.errors.LocalProtocolError`.

    With ``username``/``password`` both no-auth and username/password are
    offered, so the proxy decides; without them only no-auth is offered.

    Example (username/password, IPv4 target)::

        >>> hs = Socks5Handshake(target_host="127.0.0.1", target_port=7600, username="u", password="p")
        >>> hs.initiate()
        b'\\x05\\x02\\x00\\x02'
        >>> hs.receive_data(b"\\x05\\x02"), hs.data_to_send()
        ([MethodSelected(method=2)], b'\\x01\\x01u\\x01p')
        >>> hs.receive_data(b"\\x01\\x00"), hs.state
        ([AuthSucceeded()], <Socks5State.AWAIT_REPLY: 'AWAIT_REPLY'>)
        >>> hs.data_to_send()
        b'\\x05\\x01\\x00\\x01\\x7f\\x00\\x00\\x01\\x1d\\xb0'
        >>> hs.receive_data(b"\\x05\\x05\\x00\\x01")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ProxyError: SOCKS5 proxy could not connect to 127.0.0.1:7600: connection refused (reply 0x05)
    """

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        username: Optional[str] = None,
        password: Optional[str] = None,
        remote_dns: bool = True,
    ) -> None:
        if (username is None) != (password is None):
            raise ConfigurationError("SOCKS5 username and password must be given together")
        self._request = bytes([SOCKS_VERSION, CMD_CONNECT, 0x00]) + encode_address(
            target_host, target_port, remote_dns=remote_dns
        )
        self._auth: Optional[bytes] = None
        if username is not None and password is not None:
            user = _credential(username, "username", min_len=1)
            pw = _credential(password, "password", min_len=0)
            self._auth = bytes([AUTH_VERSION, len(user)]) + user + bytes([len(pw)]) + pw
        self.target = (
            f"[{_strip_brackets(target_host)}]:{target_port}" if ":" in target_host else f"{target_host}:{target_port}"
        )
        self._methods = (METHOD_NO_AUTH, METHOD_USERNAME_PASSWORD) if self._auth else (METHOD_NO_AUTH,)
        self._state = Socks5State.IDLE
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self.trailing_data = b""
        """Bytes received after the CONNECT reply: the start of the tunnelled stream."""
        self.bound_address: Optional[tuple[str, int]] = None
        """``(host, port)`` the proxy bound for the tunnel, once ``CONNECTED``."""
        self.error: Optional[ProxyError] = None
        """The error that moved the machine to ``FAILED``."""

    # -- state ---------------------------------------------------------------
    @property
    def state(self) -> Socks5State:
        """The current :class:`Socks5State`."""
        return self._state

    def _transition(self, trigger: str) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(f"SOCKS5 handshake cannot {trigger!r} in state {self._state.value}") from None

    def _fail(self, reason: str, message: str) -> ProxyError:
        err = ProxyError(message, reason=reason, retryable=reason not in _NOT_RETRYABLE)
        self._transition("fail")
        self.error = err
        return err

    # -- output --------------------------------------------------------------
    def initiate(self) -> bytes:
        """Start the handshake; returns the greeting to send (and nothing stays queued).

        Example::

            >>> Socks5Handshake(target_host="::1", target_port=1).initiate()
            b'\\x05\\x01\\x00'
        """
        self._transition("initiate")
        return bytes([SOCKS_VERSION, len(self._methods), *self._methods])

    def data_to_send(self) -> bytes:
        """Bytes that must be sent to the proxy now (empty if none); the queue is drained.

        Example::

            >>> Socks5Handshake(target_host="h", target_port=1).data_to_send()
            b''
        """
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    # -- input ---------------------------------------------------------------
    def bytes_needed(self) -> int:
        """How many more bytes the current reply needs (0 when no reply is awaited).

        Reading exactly this many never consumes tunnel data. For a CONNECT
        reply the count grows once the address type is known.

        Example::

            >>> hs = Socks5Handshake(target_host="h", target_port=1)
            >>> _ = hs.initiate(); hs.bytes_needed()
            2
        """
        if self._state in (Socks5State.AWAIT_METHOD, Socks5State.AWAIT_AUTH):
            return 2 - len(self._inbuf)
        if self._state is Socks5State.AWAIT_REPLY:
            return self._reply_length() - len(self._inbuf)
        return 0

    def _reply_length(self) -> int:
        buf = self._inbuf
        if len(buf) < 4:
            return 4
        atyp = buf[3]
        if atyp == ATYP_IPV4:
            return 4 + 4 + 2
        if atyp == ATYP_IPV6:
            return 4 + 16 + 2
        if len(buf) < 5:  # domain: the length byte is not here yet
            return 5
        return 5 + buf[4] + 2

    def receive_data(self, data: bytes) -> list[Socks5Event]:
        """Feed bytes received from the proxy; returns the events they completed.

        Incomplete replies are buffered. Raises ``ProxyError`` on a failed or
        malformed reply. After ``CONNECTED`` the bytes go to
        :attr:`trailing_data`.

        Example::

            >>> hs = Socks5Handshake(target_host="h", target_port=1)
            >>> _ = hs.initiate()
            >>> hs.receive_data(b"\\x05"), hs.receive_data(b"\\xff")
            Traceback (most recent call last):
            ...
            nexus_green.errors.ProxyError: SOCKS5 proxy accepted none of the offered authentication methods (no authentication); it may require a username and password
        """
        if self._state is Socks5State.IDLE:
            raise LocalProtocolError("SOCKS5 handshake received data before initiate()")
        if self._state is Socks5State.FAILED:
            raise LocalProtocolError(f"SOCKS5 handshake already failed: {self.error}")
        if self._state is Socks5State.CONNECTED:
            self.trailing_data += bytes(data)
            return []
        self._inbuf += data
        events: list[Socks5Event] = []
        while True:
            event = self._step()
            if event is None:
                return events
            events.append(event)
            if self._state is Socks5State.CONNECTED:
                self.trailing_data = bytes(self._inbuf)
                self._inbuf.clear()
                return events

    def _step(self) -> Optional[Socks5Event]:
        if self._state is Socks5State.AWAIT_METHOD:
            return self._read_method()
        if self._state is Socks5State.AWAIT_AUTH:
            return self._read_auth()
        return self._read_reply()

    def _read_method(self) -> Optional[Socks5Event]:
        buf = self._inbuf
        if buf and buf[0] != SOCKS_VERSION:
            raise self._fail(
                "malformed_reply", f"SOCKS5 proxy answered the greeting with version {buf[0]:#04x}, not 0x05"
            )
        if len(buf) < 2:
            return None
        method = buf[1]
        del buf[:2]
        if method == METHOD_NO_ACCEPTABLE:
            offered = ", ".join(_METHOD_NAMES[m] for m in self._methods)
            hint = "" if self._auth else "; it may require a username and password"
            raise self._fail(
                "no_acceptable_methods",
                f"SOCKS5 proxy accepted none of the offered authentication methods ({offered}){hint}",
            )
        if method not in self._methods:
            name = _METHOD_NAMES.get(method, "unknown")
            raise self._fail(
                "malformed_reply",
                f"SOCKS5 proxy chose authentication method {method:#04x} ({name}) that was not offered",
            )
        if method == METHOD_USERNAME_PASSWORD:
            assert self._auth is not None
            self._transition("method_userpass")
            self._outbuf += self._auth
        else:
            self._transition("method_no_auth")
            self._outbuf += self._request
        return MethodSelected(method=method)

    def _read_auth(self) -> Optional[Socks5Event]:
        buf = self._inbuf
        # RFC 1929 says version 0x01; some proxies echo 0x05, which is harmless.
        if buf and buf[0] not in (AUTH_VERSION, SOCKS_VERSION):
            raise self._fail(
                "malformed_reply",
                f"SOCKS5 proxy answered username/password authentication with version {buf[0]:#04x}, not 0x01",
            )
        if len(buf) < 2:
            return None
        status = buf[1]
        del buf[:2]
        if status != 0:
            raise self._fail("auth_rejected", f"SOCKS5 proxy rejected the username and password (status {status:#04x})")
        self._transition("auth_ok")
        self._outbuf += self._request
        return AuthSucceeded()

    def _read_reply(self) -> Optional[Socks5Event]:
        buf = self._inbuf
        if buf and buf[0] != SOCKS_VERSION:
            raise self._fail("malformed_reply", f"SOCKS5 proxy answered CONNECT with version {buf[0]:#04x}, not 0x05")
        if len(buf) >= 2 and buf[1] != 0:
            # Fail on the reply code alone: some proxies close without sending the address.
            code = buf[1]
            reason = REPLY_REASONS.get(code)
            if reason is None:
                raise self._fail(
                    "malformed_reply",
                    f"SOCKS5 proxy answered CONNECT to {self.target} with unassigned reply code {code:#04x}",
                )
            raise self._fail(
                reason, f"SOCKS5 proxy could not connect to {self.target}: {_REPLY_TEXT[code]} (reply {code:#04x})"
            )
        if len(buf) >= 4 and buf[3] not in (ATYP_IPV4, ATYP_IPV6, ATYP_DOMAIN):
            raise self._fail("malformed_reply", f"SOCKS5 proxy's CONNECT reply has unknown address type {buf[3]:#04x}")
        need = self._reply_length()
        if len(buf) < need:
            return None
        atyp, raw_addr, port = buf[3], bytes(buf[4 : need - 2]), int.from_bytes(buf[need - 2 : need], "big")
        del buf[:need]
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(raw_addr))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(raw_addr))
        else:
            try:
                host = raw_addr[1:].decode("ascii")
            except UnicodeDecodeError:
                raise self._fail(
                    "malformed_reply", "SOCKS5 proxy's CONNECT reply has a non-ASCII bound host name"
                ) from None
        self._transition("reply_ok")
        self.bound_address = (host, port)
        return TunnelEstablished(bound_host=host, bound_port=port)

    def __repr__(self) -> str:
        return f"<Socks5Handshake target={self.target} state={self._state.value}>"
