"""open_stream's one time budget (timeout and until on the caller's clock), Happy Eyeballs, and OS errors
mapped by where they happened.

Blackholed addresses are made in user space: a loopback listener with backlog 0
whose accept queue is filled by a connection that is never accepted. Linux then
drops further SYNs (``tcp_abort_on_overflow`` is 0 by default), so a connect to
it hangs until the client gives up; :func:`test_blackhole_drops_syns` proves
that premise on the machine running the tests.
"""

from __future__ import annotations

import errno
import re
import socket as stdsocket
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.select
import pytest
from gevent import socket as gsocket

from nexus_green.clock import FakeClock
from nexus_green.errors import (
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    HandshakeTimeout,
)
from nexus_green.events import Event, EventBus
from nexus_green.greenlets import live_greenlets
from nexus_green.timers import Interrupt, arm
from nexus_green.transport import socks5, tls
from nexus_green.transport import stream as stream_mod
from nexus_green.transport.endpoint import Endpoint
from nexus_green.transport.stream import ConnectInfo, Stream, map_os_error, open_stream

pytestmark = pytest.mark.usefixtures("leakcheck")

V4, V6 = stdsocket.AF_INET, stdsocket.AF_INET6


# --------------------------------------------------------------------- helpers
def loop_time() -> float:
    """The hub loop's idea of real time (refreshed)."""
    loop = gevent.get_hub().loop
    loop.update_now()
    return float(loop.now())


def addrinfo(family: int, addr: tuple[Any, ...]) -> tuple[Any, ...]:
    return (family, stdsocket.SOCK_STREAM, stdsocket.IPPROTO_TCP, "", addr)


def fmt(addr: tuple[Any, ...]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def connect_hangs(family: int, addr: tuple[Any, ...], seconds: float) -> tuple[bool, Any]:
    """Start a non-blocking connect; True (and the socket) if it neither succeeded nor failed within ``seconds``."""
    c = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    c.setblocking(False)
    c.connect_ex(addr)
    _, writable, _ = gevent.select.select([], [c], [], seconds)
    return not writable, c


class Blackhole:
    """A loopback address whose SYNs are dropped: a backlog-0 listener whose accept queue is full."""

    def __init__(self, family: int = V4) -> None:
        host = "::1" if family == V6 else "127.0.0.1"
        self.family = family
        self.listener = stdsocket.socket(family, stdsocket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.addr: tuple[Any, ...] = self.listener.getsockname()[:2]
        self.fillers: list[Any] = []
        for _ in range(8):  # backlog 0 holds one connection; more only if the kernel rounds up
            hung, c = connect_hangs(family, self.addr, 0.1)
            self.fillers.append(c)
            if hung:
                return  # this filler's own SYN was dropped: the queue is full
        self.close()
        raise AssertionError("the accept queue of a backlog-0 listener never filled")

    @property
    def info(self) -> tuple[Any, ...]:
        return addrinfo(self.family, self.addr)

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.listener.close()


class Listener:
    """A loopback listener that accepts (when asked) and otherwise never speaks."""

    def __init__(self, family: int = V4) -> None:
        self.family = family
        self.sock = gsocket.socket(family, stdsocket.SOCK_STREAM)
        self.sock.bind(("::1" if family == V6 else "127.0.0.1", 0))
        self.sock.listen(16)
        self.addr: tuple[Any, ...] = self.sock.getsockname()[:2]
        self.accepted: list[Any] = []

    @property
    def info(self) -> tuple[Any, ...]:
        return addrinfo(self.family, self.addr)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("tcp", self.addr[0], self.addr[1])

    def accept(self) -> Any:
        with gevent.Timeout(5):
            conn, _ = self.sock.accept()
        self.accepted.append(conn)
        return conn

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


def refused(family: int = V4) -> tuple[Any, ...]:
    """The address of a port nobody listens on (bound, then closed)."""
    s = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    s.bind(("::1" if family == V6 else "127.0.0.1", 0))
    addr = s.getsockname()[:2]
    s.close()
    return addrinfo(family, addr)


def read_until_eof(peer: Any) -> bytes:
    """Everything the peer gets until the other side closes (bounded)."""
    got = b""
    with gevent.Timeout(5):
        while True:
            chunk = peer.recv(65536)
            if not chunk:
                return got
            got += chunk


def racing() -> list[Any]:
    return [g for g in live_greenlets() if g.name.startswith("nexus_green:connect ")]


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


NAMED = Endpoint.parse("tcp://service.example:7600")  # resolved only through the injected resolver


# --------------------------------------------------------------------- the blackhole premise
@pytest.mark.parametrize("family", [V4, V6])
def test_blackhole_drops_syns(family: int) -> None:
    b = Blackhole(family)
    try:
        hung, c = connect_hangs(family, b.addr, 0.5)
        c.close()
        assert hung, "a connect to a full backlog-0 listener completed: SYNs are not dropped here"
    finally:
        b.close()


# --------------------------------------------------------------------- Happy Eyeballs
def test_blackholed_first_address_loses_to_the_second_after_attempt_delay(
    blackhole: Blackhole, listener: Listener
) -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, prefix="connect.")
    info = ConnectInfo(endpoint=NAMED)
    t0 = loop_time()
    s = open_stream(
        NAMED,
        timeout=5,
        attempt_delay=0.2,
        resolver=lambda host, port: [blackhole.info, listener.info],
        bus=bus,
        info=info,
    )
    elapsed = loop_time() - t0
    try:
        # The second attempt starts only once the first has hung for attempt_delay, and wins at once.
        assert 0.19 <= elapsed < 2.5, elapsed
        assert info.attempts == [fmt(blackhole.addr), fmt(listener.addr)]
        assert info.peer == fmt(listener.addr)
        assert info.phase == "tcp" and set(info.phases) == {"dns", "tcp"}
        assert [e.name for e in seen][-1] == "connect.tcp.complete"
        assert racing() == []  # the losing attempt's greenlet finished before open_stream returned
        peer = listener.accept()
        s.sendall(b"ok")
        with gevent.Timeout(5):
            assert peer.recv(2) == b"ok"
    finally:
        s.close()
    assert s.try_send(b"late") == 0  # a closed stream takes nothing


def test_families_are_interleaved_and_unneeded_addresses_never_tried(listener: Listener) -> None:
    holes = [Blackhole(V6), Blackhole(V6)]
    try:
        info = ConnectInfo(endpoint=NAMED)
        # The resolver lists both IPv6 addresses first; the race tries IPv6, then IPv4, then the other IPv6.
        s = open_stream(
            NAMED,
            timeout=5,
            attempt_delay=0.05,
            resolver=lambda host, port: [holes[0].info, holes[1].info, listener.info],
            info=info,
        )
        s.close()
        assert info.attempts == [fmt(holes[0].addr), fmt(listener.addr)]
        assert info.peer == fmt(listener.addr)
        assert racing() == []
    finally:
        for h in holes:
            h.close()


def test_a_failure_starts_the_next_attempt_at_once(listener: Listener) -> None:
    info = ConnectInfo(endpoint=NAMED)
    t0 = loop_time()
    s = open_stream(NAMED, timeout=20, attempt_delay=10, resolver=lambda h, p: [refused(), listener.info], info=info)
    s.close()
    assert loop_time() - t0 < 5  # did not wait for the 10 s attempt delay
    assert info.peer == fmt(listener.addr) and len(info.attempts) == 2


def test_an_address_whose_socket_cannot_be_made_counts_as_a_failed_attempt(listener: Listener) -> None:
    bogus = (4242, stdsocket.SOCK_STREAM, stdsocket.IPPROTO_TCP, "", ("nowhere", 1))  # no such address family
    info = ConnectInfo(endpoint=NAMED)
    s = open_stream(NAMED, timeout=20, attempt_delay=10, resolver=lambda h, p: [bogus, listener.info], info=info)
    s.close()
    assert info.attempts == ["nowhere:1", fmt(listener.addr)] and info.peer == fmt(listener.addr)


def test_every_address_failing_raises_the_last_error_listing_the_addresses() -> None:
    addrs = [refused(V4), refused(V6), refused(V4)]
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, prefix="connect.tcp.")
    info = ConnectInfo(endpoint=NAMED)
    with pytest.raises(ConnectionRefused) as exc_info:
        open_stream(NAMED, timeout=5, resolver=lambda h, p: addrs, bus=bus, info=info)
    err = exc_info.value
    tried = [fmt(a[4]) for a in (addrs[0], addrs[1], addrs[2])]  # interleaved: v4, v6, v4
    assert str(err) == f"connect to service.example:7600 (tried {', '.join(tried)}): connection refused"
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert info.attempts == tried and info.peer == ""
    assert [e.name for e in seen] == ["connect.tcp.started", "connect.tcp.failed"]
    assert seen[-1].attrs["error"] is err
    assert racing() == []


def test_single_address_failure_names_the_address_only_when_it_differs() -> None:
    addr = refused()
    ep = Endpoint("tcp", addr[4][0], addr[4][1])
    with pytest.raises(ConnectionRefused, match=rf"^connect to {ep.address}: connection refused$"):
        open_stream(ep, timeout=5)
    with pytest.raises(ConnectionRefused, match=rf"^connect to service.example:7600 \(tried {ep.address}\)"):
        open_stream(NAMED, timeout=5, resolver=lambda h, p: [addr])


def test_single_address_socket_error_is_a_connect_error() -> None:
    bogus = (4242, stdsocket.SOCK_STREAM, stdsocket.IPPROTO_TCP, "", ("nowhere", 1))
    with pytest.raises(ConnectError, match=r"connect to service.example:7600 \(tried nowhere:1\): ") as exc_info:
        open_stream(NAMED, timeout=5, resolver=lambda h, p: [bogus])
    assert type(exc_info.value) is ConnectError and isinstance(exc_info.value.__cause__, OSError)


def test_overall_limit_ends_the_race_as_a_tcp_timeout() -> None:
    holes = [Blackhole(), Blackhole()]
    clock = FakeClock()
    info = ConnectInfo(endpoint=NAMED)
    t0 = loop_time()
    try:
        with pytest.raises(ConnectTimeout) as exc_info:
            open_stream(
                NAMED,
                timeout=10,
                clock=clock,
                attempt_delay=0.25,
                resolver=lambda h, p: [holes[0].info, holes[1].info],
                info=info,
            )
        err = exc_info.value
        assert err.phase == "tcp" and info.phase == "tcp"
        assert str(err).startswith("connect to service.example:7600 timed out after 10s (connect timeout) during tcp")
        assert clock.now() == 10.0 and info.phases["tcp"] == 10.0
        assert info.attempts == [fmt(holes[0].addr), fmt(holes[1].addr)]
        assert err.__cause__ is None
        assert racing() == []  # both attempts finished, their sockets closed (leakcheck counts the fds)
        assert loop_time() - t0 < 5  # the FakeClock drove the 10 s; no real wait
    finally:
        for h in holes:
            h.close()


def test_race_that_only_hangs_after_failures_ends_at_the_callers_budget(blackhole: Blackhole) -> None:
    clock = FakeClock(start=100.0)
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(
            NAMED,
            timeout=None,
            until=103.0,
            clock=clock,
            attempt_delay=0.25,
            resolver=lambda h, p: [blackhole.info, refused()],
        )
    assert exc_info.value.phase == "tcp" and clock.now() == 103.0
    assert "timed out after 3.0s (the call's time budget) during tcp" in str(exc_info.value)
    assert racing() == []


def test_killing_the_caller_mid_race_leaks_nothing(blackhole: Blackhole) -> None:
    other = Blackhole()
    try:
        caller = gevent.spawn(
            open_stream,
            NAMED,
            timeout=30,
            attempt_delay=0.01,
            resolver=lambda h, p: [blackhole.info, other.info],
        )
        with gevent.Timeout(5):
            while len(racing()) < 2:
                gevent.sleep(0.01)
        caller.kill()
        assert caller.dead and isinstance(caller.value, gevent.GreenletExit)  # killed, not finished
        assert racing() == []
    finally:
        other.close()


def test_someone_elses_timeout_during_the_race_propagates_as_itself(blackhole: Blackhole) -> None:
    other = Blackhole()
    outer = gevent.Timeout(0.1)
    try:
        with pytest.raises(gevent.Timeout) as exc_info, outer:
            open_stream(NAMED, timeout=30, attempt_delay=0.01, resolver=lambda h, p: [blackhole.info, other.info])
        assert exc_info.value is outer
        assert racing() == []
    finally:
        other.close()


def test_a_single_address_is_connected_without_a_greenlet(
    listener: Listener, blackhole: Blackhole, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[Any] = []
    real_spawn = stream_mod.spawn
    monkeypatch.setattr(stream_mod, "spawn", lambda *a, **k: spawned.append(a) or real_spawn(*a, **k))
    s = open_stream(listener.endpoint, timeout=5)
    s.close()
    clock = FakeClock()
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(NAMED, timeout=2, clock=clock, resolver=lambda h, p: [blackhole.info])
    assert exc_info.value.phase == "tcp" and clock.now() == 2.0
    assert spawned == []
    open_stream(NAMED, timeout=5, resolver=lambda h, p: [refused(), listener.info]).close()
    assert len(spawned) == 2  # a race spawns one greenlet per attempt it starts


def test_a_kill_while_finishing_the_losers_closes_the_winner_too(
    blackhole: Blackhole, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    real_new, real_finish = stream_mod._new_socket, stream_mod._finish

    def new_socket(*args: Any) -> Any:
        made.append(real_new(*args))
        return made[-1]

    def finish(greenlets: list[Any]) -> None:
        real_finish(greenlets)
        raise gevent.GreenletExit  # as if the caller were killed while it waited for the losers

    monkeypatch.setattr(stream_mod, "_new_socket", new_socket)
    monkeypatch.setattr(stream_mod, "_finish", finish)
    with pytest.raises(gevent.GreenletExit):
        open_stream(NAMED, timeout=5, attempt_delay=0.05, resolver=lambda h, p: [blackhole.info, listener.info])
    assert len(made) == 2 and [s.fileno() for s in made] == [-1, -1]  # the loser and the winner
    assert racing() == []


def test_a_socket_option_the_address_family_refuses_is_a_connect_error(tmp_path: Any) -> None:
    # A resolver may return what it likes; TCP_NODELAY on a UNIX socket fails, and the socket is closed.
    unix = (stdsocket.AF_UNIX, stdsocket.SOCK_STREAM, 0, "", str(tmp_path / "sock"))
    where = re.escape(f"(tried {tmp_path}/sock): [Errno {errno.EOPNOTSUPP}]")
    with pytest.raises(ConnectError, match=where):
        open_stream(NAMED, timeout=5, resolver=lambda h, p: [unix])


# --------------------------------------------------------------------- the budget across phases
def test_stalled_tls_handshake_ends_at_the_callers_budget_on_a_fake_clock(listener: Listener) -> None:
    config = tls.TLSConfig(verify=False)
    context = tls.make_context(config)
    got_remaining: list[Any] = []

    def secure(sock: Any, ep: Endpoint, remaining: Any) -> Any:
        got_remaining.append(remaining)
        return tls.wrap(sock, config, ep.host, remaining, port=ep.port, context=context)

    clock = FakeClock()
    info = ConnectInfo(endpoint=listener.endpoint)
    t0 = loop_time()
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(listener.endpoint, timeout=10, until=clock.now() + 1.0, clock=clock, secure=secure, info=info)
    real = loop_time() - t0
    err = exc_info.value
    assert err.phase == "tls" and info.phase == "tls"
    assert type(err) is ConnectTimeout and err.__cause__ is None
    msg = str(err)
    assert msg.startswith(f"connect to {listener.endpoint.address} timed out after 1.0s")
    assert "(the call's time budget; connect timeout 10s) during tls (phases so far: dns=" in msg
    assert clock.now() == 1.0 and got_remaining == [1.0]
    assert real < 0.5, real  # the FakeClock's second passed without a real one
    # The peer got the ClientHello, then the close: the socket did not leak.
    peer = listener.accept()
    hello = read_until_eof(peer)
    assert hello[:1] == b"\x16"  # a TLS handshake record


def test_stalled_socks5_handshake_times_out_in_phase_socks5(listener: Listener) -> None:
    def tunnel(sock: Any, ep: Endpoint) -> None:
        socks5.open_tunnel(
            sock,
            target_host="target.example",
            target_port=1,
            username=None,
            password=None,
            remote_dns=True,
            proxy_label="socks5://test",
        )

    clock = FakeClock()
    target = Endpoint.parse("tcp://target.example:1")
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(target, timeout=3, clock=clock, proxy=listener.endpoint, tunnel=tunnel)
    assert exc_info.value.phase == "socks5" and clock.now() == 3.0
    assert "timed out after 3s (connect timeout) during socks5" in str(exc_info.value)
    assert read_until_eof(listener.accept()) == b"\x05\x01\x00"  # the greeting, then the close


def test_phase_in_progress_is_visible_to_another_greenlet(listener: Listener) -> None:
    stalled = gevent.event.Event()
    release = gevent.event.Event()

    def secure(sock: Any, ep: Endpoint, remaining: Any) -> Any:
        stalled.set()
        release.wait()
        return sock

    info = ConnectInfo(endpoint=listener.endpoint)
    g = gevent.spawn(open_stream, listener.endpoint, timeout=5, secure=secure, info=info)
    with gevent.Timeout(5):
        stalled.wait()
        assert info.phase == "tls" and set(info.phases) == {"dns", "tcp"}
        release.set()
        s = g.get()
    s.close()


def test_someone_elses_timer_on_the_same_clock_propagates_as_itself(listener: Listener) -> None:
    clock = FakeClock()
    outer = arm(clock, 2.0)  # an enclosing limit, shorter than the connect's own
    try:
        with pytest.raises(Interrupt) as exc_info:
            open_stream(listener.endpoint, timeout=10, clock=clock, tunnel=lambda sock, ep: clock.sleep(60))
        assert exc_info.value.timer is outer and clock.now() == 2.0
    finally:
        outer.cancel()
    assert read_until_eof(listener.accept()) == b""  # the socket was closed on the way out


def test_a_hooks_own_timeout_is_named_by_its_phase(listener: Listener) -> None:
    def secure(sock: Any, ep: Endpoint, remaining: Any) -> Any:
        raise HandshakeTimeout("TLS handshake with x did not finish within 0.5s")

    with pytest.raises(HandshakeTimeout) as exc_info:
        open_stream(listener.endpoint, timeout=5, secure=secure)
    assert exc_info.value.phase == "tls"


def test_dns_timeout_on_a_fake_clock() -> None:
    clock = FakeClock()
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(NAMED, timeout=4, clock=clock, resolver=lambda h, p: clock.sleep(60) or [])
    assert exc_info.value.phase == "dns" and clock.now() == 4.0
    assert str(exc_info.value).endswith("during dns (phases so far: dns=4000.0ms)")


def test_a_spent_budget_raises_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start=50.0)
    calls: list[Any] = []
    info = ConnectInfo(endpoint=NAMED)
    with pytest.raises(ConnectTimeout) as exc_info:
        open_stream(NAMED, until=49.0, clock=clock, resolver=lambda h, p: calls.append(h) or [], info=info)
    assert exc_info.value.phase == "connect" and calls == [] and info.phases == {}
    assert str(exc_info.value) == "connect to service.example:7600 not started: the call's time budget ended 1.0s ago"
    with pytest.raises(ConnectTimeout, match=r"not started: a connect timeout of 0s leaves no time$"):
        open_stream(NAMED, timeout=0, clock=clock, resolver=lambda h, p: calls.append(h) or [])
    assert calls == []


def test_empty_resolver_answer_is_a_dns_error() -> None:
    from nexus_green.errors import DNSError

    with pytest.raises(DNSError, match="the resolver returned no addresses"):
        open_stream(NAMED, timeout=5, resolver=lambda h, p: [])


def test_budget_spent_by_a_hook_that_never_yields_does_not_strike_later(listener: Listener) -> None:
    # A FakeClock moved past the limit inside the connect queues the timer's Interrupt instead of throwing
    # it: the finished connect must swallow it, not leave it to hit the caller's next switch.
    clock = FakeClock()
    s = open_stream(listener.endpoint, timeout=1, clock=clock, tunnel=lambda sock, ep: clock.advance(5))
    try:
        gevent.sleep(0.01)
        gevent.sleep(0)
    except Interrupt:  # pragma: no cover - the failure this test guards against
        pytest.fail("the connect's expired timer struck after open_stream returned")
    finally:
        s.close()


# --------------------------------------------------------------------- errors on an established link
def _stalled_stream(listener: Listener) -> tuple[Stream, Any]:
    """A stream whose peer stops reading, with TCP_USER_TIMEOUT 200 ms and small buffers."""
    s = open_stream(listener.endpoint, timeout=5)
    peer = listener.accept()
    peer.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    raw = s._sock
    raw.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096)
    raw.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_USER_TIMEOUT, 200)
    return s, peer


def test_etimedout_on_an_established_recv_is_connection_lost(listener: Listener) -> None:
    s, _peer = _stalled_stream(listener)
    try:
        while s.try_send(b"x" * 65536):
            pass  # fill both buffers: from now on our data goes unacknowledged
        with gevent.Timeout(10), pytest.raises(ConnectionLost) as exc_info:
            s.recv(10)
        err = exc_info.value
        assert isinstance(err.__cause__, TimeoutError) and err.__cause__.errno == errno.ETIMEDOUT
        assert "recv from" in str(err) and "sent data went unacknowledged" in str(err)
        assert not isinstance(err, ConnectTimeout)
        with pytest.raises(ConnectionLost, match="send to"):
            s.try_send(b"x")  # the link is gone: EPIPE now
    finally:
        s.close()


def test_etimedout_on_an_established_sendall_is_connection_lost(listener: Listener) -> None:
    s, _peer = _stalled_stream(listener)
    try:
        with gevent.Timeout(10), pytest.raises(ConnectionLost) as exc_info:
            s.sendall(b"x" * (4 << 20))
        assert isinstance(exc_info.value.__cause__, TimeoutError)
        assert exc_info.value.__cause__.errno == errno.ETIMEDOUT
    finally:
        s.close()


def test_etimedout_mapping_by_where_it_happened() -> None:
    exc = TimeoutError(errno.ETIMEDOUT, "Connection timed out")
    assert type(map_os_error(exc, "recv from x", connecting=False)) is ConnectionLost
    connecting = map_os_error(exc, "connect to x", connecting=True)
    assert type(connecting) is ConnectTimeout and connecting.phase == "tcp"
