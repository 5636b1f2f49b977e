"""open_stream, Stream and map_os_error: phases and events, every failure mode, timeouts, fds."""

from __future__ import annotations

import errno
import os
import socket as stdsocket
import struct
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from nexus_green.clock import FakeClock
from nexus_green.errors import (
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    DNSError,
    ProxyError,
    RequestTimeout,
)
from nexus_green.events import Event, EventBus
from nexus_green.transport import stream as stream_mod
from nexus_green.transport.endpoint import Endpoint
from nexus_green.transport.stream import ConnectInfo, Stream, map_os_error, open_stream

pytestmark = pytest.mark.usefixtures("leakcheck")


# --------------------------------------------------------------------- helpers
class Listener:
    """A loopback listening socket; accept() hands back the server side of a connection."""

    def __init__(self, family: int = stdsocket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = gsocket.socket(family, stdsocket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[Any] = []

    @property
    def endpoint(self) -> Endpoint:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return Endpoint.parse(f"tcp://{host}:{self.port}")

    def accept(self) -> Any:
        with gevent.Timeout(5):
            conn, _ = self.sock.accept()
        self.accepted.append(conn)
        return conn

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def bus_events() -> Iterator[tuple[EventBus, list[Event]]]:
    bus = EventBus()
    seen: list[Event] = []
    off = bus.subscribe(seen.append, prefix="connect.")
    yield bus, seen
    off()


def free_port() -> int:
    """A port nobody listens on: bound, then closed."""
    s = stdsocket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def reset(sock: Any) -> None:
    """Close with SO_LINGER 0 so the peer gets an RST, not a FIN."""
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


# --------------------------------------------------------------------- success, phases, events
def test_open_stream_plain_tcp_phases_and_events(listener: Listener, bus_events: Any) -> None:
    bus, seen = bus_events
    info = ConnectInfo(endpoint=listener.endpoint)
    s = open_stream(listener.endpoint, timeout=5, conn_id="c1", bus=bus, info=info)
    try:
        peer = listener.accept()
        assert names(seen) == [
            "connect.dns.started",
            "connect.dns.complete",
            "connect.tcp.started",
            "connect.tcp.complete",
        ]
        assert all(e.attrs["conn_id"] == "c1" for e in seen)
        assert all(e.attrs["endpoint"] == str(listener.endpoint) for e in seen)
        completes = [e for e in seen if e.name.endswith(".complete")]
        assert [e.attrs["duration"] for e in completes] == [info.phases["dns"], info.phases["tcp"]]
        assert set(info.phases) == {"dns", "tcp"}
        assert all(v >= 0 for v in info.phases.values())
        assert info.total >= info.phases["tcp"]
        assert info.peer == f"127.0.0.1:{listener.port}"
        assert s.label == listener.endpoint.address
        # bytes flow both ways
        s.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        peer.sendall(b"pong")
        assert s.recv(4) == b"pong"
        assert (s.bytes_sent, s.bytes_received) == (4, 4)
    finally:
        s.close()


def test_open_stream_without_info_and_without_timeout(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=None)
    listener.accept()
    assert not s.closed and s.fileno() >= 0
    s.close()


def test_tcp_nodelay_is_set(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    try:
        assert s._sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY) != 0
    finally:
        s.close()


def test_app_default_socket_timeout_does_not_leak_into_streams(listener: Listener) -> None:
    # Legacy apps call socket.setdefaulttimeout(); an idle stream must not time out because of it.
    old = stdsocket.getdefaulttimeout()
    stdsocket.setdefaulttimeout(0.05)
    try:
        s = open_stream(listener.endpoint, timeout=5)
    finally:
        stdsocket.setdefaulttimeout(old)
    try:
        peer = listener.accept()
        assert s._sock.gettimeout() is None
        gevent.spawn_later(0.2, peer.sendall, b"late")
        assert s.recv(4) == b"late"  # waited past the app's default timeout
    finally:
        s.close()


def test_ipv6_literal_endpoint() -> None:
    lst = Listener(stdsocket.AF_INET6, "::1")
    try:
        info = ConnectInfo(endpoint=lst.endpoint)
        s = open_stream(lst.endpoint, timeout=5, info=info)
        lst.accept()
        assert info.peer == f"[::1]:{lst.port}"
        assert s.label == f"[::1]:{lst.port}"
        s.close()
    finally:
        lst.close()


def test_tunnel_and_secure_phases_measured_with_injected_clock(listener: Listener, bus_events: Any) -> None:
    bus, seen = bus_events
    clock = FakeClock()
    calls: list[tuple[str, Any, Any]] = []

    class Wrapped:
        """Stands in for a TLS socket: what secure() returns is what the Stream wraps."""

        def __init__(self, raw: Any) -> None:
            self.raw = raw

        def fileno(self) -> int:
            return int(self.raw.fileno())

        def shutdown(self, how: int) -> None:
            self.raw.shutdown(how)

        def close(self) -> None:
            self.raw.close()

    def tunnel(sock: Any, ep: Endpoint) -> None:
        calls.append(("tunnel", sock, ep))
        clock.advance(0.25)

    def secure(sock: Any, ep: Endpoint, remaining: Any) -> Any:
        calls.append(("secure", ep, remaining))
        clock.advance(0.5)
        return Wrapped(sock)

    info = ConnectInfo(endpoint=listener.endpoint)
    s = open_stream(
        listener.endpoint, timeout=10, bus=bus, clock=clock, tunnel=tunnel, secure=secure, info=info, conn_id="x"
    )
    try:
        listener.accept()
        assert info.phases == {"dns": 0.0, "tcp": 0.0, "socks5": 0.25, "tls": 0.5}
        assert info.total == 0.75
        assert calls[0][0] == "tunnel" and calls[0][2] == listener.endpoint
        assert calls[1] == ("secure", listener.endpoint, 9.75)  # what is left of the overall timeout
        assert isinstance(s._sock, Wrapped)
        assert names(seen) == [
            f"connect.{p}.{s_}" for p in ("dns", "tcp", "socks5", "tls") for s_ in ("started", "complete")
        ]
        durations = {e.name: e.attrs["duration"] for e in seen if e.name.endswith("complete")}
        assert durations["connect.socks5.complete"] == 0.25
        assert durations["connect.tls.complete"] == 0.5
    finally:
        s.close()


def test_secure_gets_a_positive_remaining_even_when_the_budget_is_spent(listener: Listener) -> None:
    clock = FakeClock()
    got: list[Any] = []
    s = open_stream(
        listener.endpoint,
        timeout=1.0,
        clock=clock,
        tunnel=lambda sock, ep: clock.advance(5),
        secure=lambda sock, ep, remaining: got.append(remaining) or sock,
    )
    listener.accept()
    s.close()
    assert got == [0.001]


def test_secure_without_timeout_gets_none(listener: Listener) -> None:
    got: list[Any] = []
    s = open_stream(listener.endpoint, timeout=None, secure=lambda sock, ep, remaining: got.append(remaining) or sock)
    listener.accept()
    s.close()
    assert got == [None]


def test_proxy_is_dialled_and_target_is_never_resolved(listener: Listener, bus_events: Any) -> None:
    bus, seen = bus_events
    target = Endpoint.parse("tcp://no-such-host.invalid:9")  # only the proxy resolves locally
    tunnelled: list[Endpoint] = []
    info = ConnectInfo(endpoint=target)
    s = open_stream(
        target,
        timeout=5,
        bus=bus,
        proxy=listener.endpoint,
        tunnel=lambda sock, ep: tunnelled.append(ep),
        info=info,
    )
    try:
        listener.accept()
        assert tunnelled == [target]
        assert info.peer == f"127.0.0.1:{listener.port}"
        assert s.label == f"no-such-host.invalid:9 via proxy 127.0.0.1:{listener.port}"
        assert "connect.socks5.complete" in names(seen)
        assert all(e.attrs["endpoint"] == str(target) for e in seen)
    finally:
        s.close()


def test_tries_every_resolved_address_in_order(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = free_port()
    addrs = [
        (stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("127.0.0.1", dead)),
        (stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("127.0.0.1", listener.port)),
    ]
    monkeypatch.setattr(stream_mod.gsocket, "getaddrinfo", lambda *a: addrs)
    info = ConnectInfo(endpoint=listener.endpoint)
    s = open_stream(Endpoint.parse("tcp://multi.example:1"), timeout=5, info=info)
    listener.accept()
    s.close()
    assert info.peer == f"127.0.0.1:{listener.port}"


def test_all_addresses_refused_reports_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = [free_port(), free_port()]
    addrs = [(stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]
    monkeypatch.setattr(stream_mod.gsocket, "getaddrinfo", lambda *a: addrs)
    with pytest.raises(ConnectionRefused) as info:
        open_stream(Endpoint.parse("tcp://multi.example:1"), timeout=5)
    tried = f"127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}"
    assert str(info.value) == f"connect to multi.example:1 (tried {tried}): connection refused"
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


# --------------------------------------------------------------------- connect failures
def test_dns_failure(bus_events: Any) -> None:
    bus, seen = bus_events
    ep = Endpoint.parse("tcp://no-such-host.invalid:7600")
    info = ConnectInfo(endpoint=ep)
    with pytest.raises(DNSError) as exc_info:
        open_stream(ep, timeout=5, bus=bus, conn_id="d1", info=info)
    err = exc_info.value
    assert "cannot resolve 'no-such-host.invalid'" in str(err)
    assert "no-such-host.invalid:7600" in str(err)
    assert isinstance(err.__cause__, stdsocket.gaierror)
    assert isinstance(err, ConnectError) and err.retryable
    assert names(seen) == ["connect.dns.started", "connect.dns.failed"]
    failed = seen[1]
    assert failed.attrs["conn_id"] == "d1"
    assert failed.attrs["error"] is err.__cause__
    assert failed.attrs["duration"] == info.phases["dns"]
    assert "tcp" not in info.phases


def test_dns_failure_of_the_proxy_names_the_proxy() -> None:
    target = Endpoint.parse("tcp://127.0.0.1:9")
    proxy = Endpoint.parse("tcp://no-such-proxy.invalid:1080")
    with pytest.raises(DNSError, match="cannot resolve 'no-such-proxy.invalid' for 127.0.0.1:9 via proxy"):
        open_stream(target, timeout=5, proxy=proxy, tunnel=lambda sock, ep: None)


def test_connection_refused(bus_events: Any) -> None:
    bus, seen = bus_events
    port = free_port()
    ep = Endpoint.parse(f"tcp://127.0.0.1:{port}")
    with pytest.raises(ConnectionRefused) as exc_info:
        open_stream(ep, timeout=5, bus=bus)
    assert f"127.0.0.1:{port}" in str(exc_info.value)
    assert exc_info.value.retryable
    assert names(seen) == ["connect.dns.started", "connect.dns.complete", "connect.tcp.started", "connect.tcp.failed"]
    assert seen[-1].attrs["error"] is exc_info.value


def test_connect_timeout_in_tunnel_names_the_phases(listener: Listener, bus_events: Any) -> None:
    bus, seen = bus_events
    info = ConnectInfo(endpoint=listener.endpoint)
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(listener.endpoint, timeout=0.1, bus=bus, info=info, tunnel=lambda sock, ep: gevent.sleep(5))
    msg = str(exc_info.value)
    assert f"connect to 127.0.0.1:{listener.port} timed out after 0.1s" in msg
    assert "phases so far: dns=" in msg and ", tcp=" in msg and ", socks5=" in msg
    assert "tls=" not in msg
    assert exc_info.value.__cause__ is None and exc_info.value.retryable
    assert names(seen)[-1] == "connect.socks5.failed"
    assert isinstance(seen[-1].attrs["error"], gevent.Timeout)
    assert set(info.phases) == {"dns", "tcp", "socks5"}
    # the half-open socket was closed: the listener's side sees EOF
    peer = listener.accept()
    with gevent.Timeout(5):
        assert peer.recv(1) == b""


def test_connect_timeout_in_secure(listener: Listener) -> None:
    with pytest.raises(ConnectTimeout, match=r"phases so far: dns=.*tcp=.*tls="):
        open_stream(listener.endpoint, timeout=0.1, secure=lambda sock, ep, rem: gevent.sleep(5))
    peer = listener.accept()
    with gevent.Timeout(5):
        assert peer.recv(1) == b""


def test_connect_timeout_during_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_resolve(*args: Any) -> Any:
        gevent.sleep(5)

    monkeypatch.setattr(stream_mod.gsocket, "getaddrinfo", slow_resolve)
    with pytest.raises(ConnectTimeout, match=r"phases so far: dns=[0-9.]+ms\)$"):
        open_stream(Endpoint.parse("tcp://slow-dns.example:1"), timeout=0.05)


def test_connect_timeout_during_tcp_connect_closes_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class BlackholeSocket(gsocket.socket):  # type: ignore[misc]
        def connect(self, address: Any) -> None:
            gevent.sleep(5)  # a SYN that is never answered

    def factory(*args: Any) -> Any:
        s = BlackholeSocket(*args)
        made.append(s)
        return s

    monkeypatch.setattr(stream_mod.gsocket, "socket", factory)
    with pytest.raises(ConnectTimeout, match=r"phases so far: dns=.*, tcp="):
        open_stream(Endpoint.parse("tcp://127.0.0.1:9"), timeout=0.05)
    assert len(made) == 1 and made[0].fileno() == -1  # closed


def test_outer_timeout_propagates_as_itself(listener: Listener) -> None:
    outer = gevent.Timeout(0.05)
    with pytest.raises(gevent.Timeout) as exc_info:
        with outer:
            open_stream(listener.endpoint, timeout=5, tunnel=lambda sock, ep: gevent.sleep(5))
    assert exc_info.value is outer
    peer = listener.accept()
    with gevent.Timeout(5):
        assert peer.recv(1) == b""  # the socket did not leak


def test_outer_timeout_propagates_when_connect_timeout_is_none(listener: Listener) -> None:
    outer = gevent.Timeout(0.05)
    with pytest.raises(gevent.Timeout) as exc_info:
        with outer:
            open_stream(listener.endpoint, timeout=None, secure=lambda sock, ep, rem: gevent.sleep(5))
    assert exc_info.value is outer
    listener.accept()


def test_outer_timeout_with_custom_exception_is_not_swallowed(listener: Listener) -> None:
    # gevent.Timeout(seconds, SomeError) raises SomeError: must not be turned into ConnectTimeout either
    with pytest.raises(RequestTimeout, match="outer budget"):
        with gevent.Timeout(0.05, RequestTimeout("outer budget")):
            open_stream(listener.endpoint, timeout=5, tunnel=lambda sock, ep: gevent.sleep(5))
    listener.accept()


def test_hook_errors_propagate_and_close_the_socket(listener: Listener, bus_events: Any) -> None:
    bus, seen = bus_events

    def refuse(sock: Any, ep: Endpoint) -> None:
        raise ProxyError("proxy said no", reason="connection_refused")

    with pytest.raises(ProxyError, match="proxy said no"):
        open_stream(listener.endpoint, timeout=5, bus=bus, tunnel=refuse)
    assert names(seen)[-1] == "connect.socks5.failed"
    assert isinstance(seen[-1].attrs["error"], ProxyError)
    peer = listener.accept()
    with gevent.Timeout(5):
        assert peer.recv(1) == b""


def test_secure_error_closes_the_socket(listener: Listener) -> None:
    def bad_tls(sock: Any, ep: Endpoint, remaining: Any) -> Any:
        raise ValueError("tls config broken")

    with pytest.raises(ValueError, match="tls config broken"):
        open_stream(listener.endpoint, timeout=None, secure=bad_tls)
    peer = listener.accept()
    with gevent.Timeout(5):
        assert peer.recv(1) == b""


def test_format_of_phases_when_none_ran() -> None:
    info = ConnectInfo(endpoint=Endpoint.parse("tcp://h:1"))
    assert stream_mod._fmt(info) == "none"
    info.phases.update(dns=0.0012, tcp=0.5)
    assert stream_mod._fmt(info) == "dns=1.2ms, tcp=500.0ms"


# --------------------------------------------------------------------- Stream I/O and failures
def test_recv_and_counters(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    peer = listener.accept()
    try:
        peer.sendall(b"abcdef")
        got = b""
        with gevent.Timeout(5):
            while len(got) < 6:
                got += s.recv(16)
        assert got == b"abcdef"
        assert s.bytes_received == 6
        s.sendall(memoryview(b"xyz"))
        assert s.bytes_sent == 3
        assert repr(s) == f"<Stream 127.0.0.1:{listener.port} fd={s.fileno()} sent=3 received=6>"
        assert peer.recv(3) == b"xyz"  # unread data would turn the peer's close into an RST
        # a graceful peer close reads as 0 / b""
        peer.close()
        with gevent.Timeout(5):
            assert s.recv(10) == b""
        assert s.bytes_received == 6
    finally:
        s.close()


def test_io_on_closed_stream_is_connection_lost(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    listener.accept()
    s.close()
    assert s.closed and s.fileno() == -1
    with pytest.raises(ConnectionLost, match="recv on closed stream to 127.0.0.1"):
        s.recv(1)
    with pytest.raises(ConnectionLost, match="send on closed stream"):
        s.sendall(b"x")
    assert repr(s).startswith("<Stream 127.0.0.1:") and "fd=-1" in repr(s)


def test_close_is_idempotent_and_tells_the_peer(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    peer = listener.accept()
    s.close()
    s.close()
    assert s.closed
    with gevent.Timeout(5):
        assert peer.recv(1) == b""


def test_close_wakes_a_blocked_reader(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    listener.accept()
    reader = gevent.spawn(s.recv, 10)
    gevent.sleep(0.01)  # let it block in recv
    s.close()
    with gevent.Timeout(5):
        reader.join()
    assert isinstance(reader.exception, ConnectionLost)
    assert "recv from 127.0.0.1" in str(reader.exception)


def test_peer_reset_is_connection_lost(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    reset(listener.accept())
    try:
        with gevent.Timeout(5), pytest.raises(ConnectionLost, match="recv from 127.0.0.1") as exc_info:
            s.recv(10)
        assert isinstance(exc_info.value.__cause__, ConnectionResetError)
        with pytest.raises(ConnectionLost, match="send to 127.0.0.1") as send_info:
            s.sendall(b"x" * 100)
        assert isinstance(send_info.value.__cause__, OSError)
        assert s.bytes_sent == 0
    finally:
        s.close()


def test_close_after_peer_reset_still_closes(listener: Listener) -> None:
    # shutdown() fails with ENOTCONN once the peer reset; close() must still release the fd
    s = open_stream(listener.endpoint, timeout=5)
    reset(listener.accept())
    with gevent.Timeout(5), pytest.raises(ConnectionLost):
        s.recv(1)
    fd = s.fileno()
    s.close()
    assert s.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_detach_forgets_the_socket_without_shutting_the_connection(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    peer = listener.accept()
    shared = os.dup(s.fileno())  # what a forked parent would still hold
    try:
        s.detach()
        s.detach()  # idempotent
        assert s.closed and s.fileno() == -1
        with pytest.raises(ConnectionLost):
            s.recv(1)
        os.write(shared, b"still up")
        with gevent.Timeout(5):
            assert peer.recv(8) == b"still up"
    finally:
        os.close(shared)


def test_close_shuts_the_connection_even_when_the_fd_is_shared(listener: Listener) -> None:
    s = open_stream(listener.endpoint, timeout=5)
    peer = listener.accept()
    shared = os.dup(s.fileno())
    try:
        s.close()
        with gevent.Timeout(5):
            assert peer.recv(1) == b""  # shutdown() reached the peer despite the other descriptor
    finally:
        os.close(shared)


def test_unconnected_stream_object() -> None:
    s = Stream(None, "nowhere")
    assert s.closed and s.fileno() == -1
    s.close()
    s.detach()
    assert repr(s) == "<Stream nowhere fd=-1 sent=0 received=0>"


# --------------------------------------------------------------------- map_os_error
@pytest.mark.parametrize(
    "exc,kind,text",
    [
        (stdsocket.gaierror(-2, "Name or service not known"), DNSError, "x: DNS resolution failed"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ConnectionRefused, "x: connection refused"),
        (TimeoutError("timed out"), ConnectTimeout, "x: timed out"),
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), ConnectTimeout, "x: timed out"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), ConnectError, "x: Network is unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), ConnectError, "x: No route to host"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), ConnectError, "x: Cannot assign"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), ConnectError, "x: [Errno 104] reset"),
        (OSError(errno.EACCES, "Permission denied"), ConnectError, "x: [Errno 13]"),
        (ValueError("odd"), ConnectError, "x: odd"),
    ],
)
def test_map_os_error_while_connecting(exc: BaseException, kind: type, text: str) -> None:
    # Nothing can have been sent while connecting: no error of this kind is a ConnectionLost.
    mapped = map_os_error(exc, "x", connecting=True)
    assert type(mapped) is kind
    assert str(mapped).startswith(text)
    assert mapped.retryable
    if kind is ConnectTimeout:
        assert mapped.phase == "tcp"


@pytest.mark.parametrize(
    "exc,text",
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), "x: [Errno 104] reset"),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "x: [Errno 32] Broken pipe"),
        (OSError(errno.EBADF, "Bad file descriptor"), "x: [Errno 9]"),
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "x: timed out, sent data went unacknowledged"),
        (TimeoutError("timed out"), "x: timed out, sent data went unacknowledged"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "x: [Errno 111]"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "x: [Errno 113]"),
        (ValueError("odd"), "x: odd"),
    ],
)
def test_map_os_error_on_an_established_link_is_connection_lost(exc: BaseException, text: str) -> None:
    # Default and connecting=False: by where it happened, not by errno.
    for mapped in (map_os_error(exc, "x"), map_os_error(exc, "x", connecting=False)):
        assert type(mapped) is ConnectionLost
        assert str(mapped).startswith(text)
        assert mapped.retryable


def test_map_os_error_unreachable_without_strerror() -> None:
    exc = OSError()
    exc.errno = errno.ENETUNREACH
    mapped = map_os_error(exc, "connect to h:1", connecting=True)
    assert type(mapped) is ConnectError
    assert str(mapped).startswith("connect to h:1: ")


def test_map_os_error_passes_nexus_errors_through() -> None:
    err = ProxyError("already mapped")
    assert map_os_error(err, "x") is err
    assert map_os_error(err, "x", connecting=True) is err
