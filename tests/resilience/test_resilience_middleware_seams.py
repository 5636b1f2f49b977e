"""ResilienceMiddleware at the seam: a real Client over real sockets, a guarded EmbeddedServer.

Which attempts carry the ``idempotency-key`` header (DESIGN principle 12: sent
or not sent decides retries, and so whether a key can matter):

* an idempotent request whose answer is lost after the server applied it
  (the link dies: maybe sent) is retried with the same key, and the server's
  IdempotencyGuard applies it once and replays the answer;
* the same loss on a request that is not idempotent is not retried, and the
  request went without a key (nothing could have sent it twice);
* a request that was not sent (connection refused) is retried, idempotent or
  not, and needs no key: the server never saw the first copy.

Between the Client and the server sits a small proxy that reads the frames
going both ways (it sees what is really on the wire) and, for chosen bodies,
drops the first answer and cuts the client's connection.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from nexus_green import Client
from nexus_green.errors import ConnectionLost, NexusError
from nexus_green.events import EventBus
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame
from nexus_green.resilience import ResilienceMiddleware, RetryConfig
from nexus_green.resilience.idempotency import HEADER
from nexus_green.testing import EmbeddedServer, RestartableServer, run_module_patched

FID_APPLY = 41


class AnswerCuttingProxy:
    """Forwards frames both ways, noting each request's key; cuts the link instead of the first answer to ``cut``."""

    def __init__(self, upstream: tuple[str, int], cut: set[bytes]) -> None:
        self.upstream = upstream
        self.cut = set(cut)
        self.sent: list[tuple[bytes, str]] = []  # (body, key or "") of every request frame on the wire
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.tasks: list[gevent.Greenlet] = []

    def __enter__(self) -> str:
        self.server.start()
        return f"tcp://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop(timeout=1)
        gevent.killall(self.tasks, timeout=1)

    def _handle(self, client: Any, _addr: Any) -> None:
        upstream = gevent.socket.create_connection(self.upstream, timeout=5)
        bodies: dict[int, bytes] = {}  # qid -> request body, on this connection
        pump = gevent.spawn(self._requests, client, upstream, bodies)
        self.tasks.append(pump)
        try:
            self._answers(upstream, client, bodies)
        finally:
            pump.kill()
            upstream.close()
            client.close()

    def _requests(self, client: Any, upstream: Any, bodies: dict[int, bytes]) -> None:
        decoder = FrameDecoder()
        while data := client.recv(65536):
            for frame in decoder.feed(data):  # (heartbeats are off)
                bodies[frame.qid] = frame.body
                self.sent.append((frame.body, frame.headers.get(HEADER, "")))
            upstream.sendall(data)

    def _answers(self, upstream: Any, client: Any, bodies: dict[int, bytes]) -> None:
        decoder = FrameDecoder()
        while data := upstream.recv(65536):
            frames: list[Frame] = decoder.feed(data)
            for frame in frames:
                body = bodies.pop(frame.qid, None)
                if body in self.cut:
                    self.cut.discard(body)
                    return  # the answer is lost and the link dies: the request may have been applied
                client.sendall(encode_frame(frame))


def _guarded_server(applied: Counter[bytes]) -> EmbeddedServer:
    def apply(frame: Frame) -> bytes:
        applied[frame.body] += 1
        return b"%s applied %d" % (frame.body, applied[frame.body])

    return EmbeddedServer(handlers={FID_APPLY: apply}, idempotency=True)


def _client(url: str, bus: EventBus) -> Client:
    middleware = ResilienceMiddleware(retry=RetryConfig(max_attempts=3, base_delay=0.001, max_delay=0.001), bus=bus)
    return Client(url, middlewares=[middleware], bus=bus, heartbeat_interval=None, timeout=5)


def test_a_retried_maybe_sent_request_carries_its_key_and_is_applied_once(leakcheck: None) -> None:
    applied: Counter[bytes] = Counter()
    bus = EventBus()
    retries: list[tuple[str, Any]] = []
    bus.subscribe(lambda e: retries.append((e.attrs["reason"], e.attrs["error"])), prefix="retry.attempt")
    with _guarded_server(applied) as server:
        with AnswerCuttingProxy(server.address, {b"pay-1"}) as url, _client(url, bus) as client:
            reply = client.request(b"pay-1", FID_APPLY, idempotent=True)
        assert reply.body == b"pay-1 applied 1"  # the first application's answer, replayed
        assert applied == {b"pay-1": 1} and server.replays == 1
    [(reason, error)] = retries
    assert reason == "idempotent" and isinstance(error, ConnectionLost)  # maybe sent: retried as idempotent


def test_the_retry_and_the_first_attempt_carry_the_same_key(leakcheck: None) -> None:
    applied: Counter[bytes] = Counter()
    bus = EventBus()
    with _guarded_server(applied) as server:
        proxy = AnswerCuttingProxy(server.address, {b"pay-2"})
        with proxy as url, _client(url, bus) as client:
            assert client.request(b"pay-2", FID_APPLY, idempotent=True).body == b"pay-2 applied 1"
            assert client.request(b"read", FID_APPLY, idempotent=True).body == b"read applied 1"
    (body1, key1), (body2, key2), (body3, key3) = proxy.sent
    assert body1 == body2 == b"pay-2" and len(key1) == 32 and key1 == key2  # one logical request, one key
    assert body3 == b"read" and len(key3) == 32 and key3 != key1  # another logical request, another key
    assert applied == {b"pay-2": 1, b"read": 1}


def test_a_maybe_sent_request_that_is_not_idempotent_is_not_resent_and_needs_no_key(leakcheck: None) -> None:
    applied: Counter[bytes] = Counter()
    bus = EventBus()
    retries: list[object] = []
    bus.subscribe(retries.append, prefix="retry.attempt")
    with _guarded_server(applied) as server:
        proxy = AnswerCuttingProxy(server.address, {b"charge"})
        with proxy as url, _client(url, bus) as client:
            with pytest.raises(ConnectionLost):
                client.request(b"charge", FID_APPLY)
    assert proxy.sent == [(b"charge", "")] and applied == {b"charge": 1} and retries == []


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_not_sent_request_is_retried_without_needing_a_key(idempotent: bool, leakcheck: None) -> None:
    seen: list[dict[str, str]] = []

    def record(frame: Frame) -> bytes:
        seen.append(dict(frame.headers))
        return b"done"

    bus = EventBus()
    reasons: list[str] = []
    with RestartableServer(EmbeddedServer(handlers={FID_APPLY: record}, idempotency=True)) as down:
        down.kill()  # nothing listens: the connect is refused, no byte of the request leaves

        def came_back(event: Any) -> None:
            reasons.append(event.attrs["reason"])
            down.restart()  # before the backoff sleep: the retry finds the server up

        bus.subscribe(came_back, prefix="retry.attempt")
        with _client(down.url, bus) as client:
            reply = client.request(b"order", FID_APPLY, idempotent=idempotent)
    assert reply.body == b"done" and reasons == ["idempotent" if idempotent else "not_sent"]
    assert len(seen) == 1
    # Idempotent: the key goes on every attempt (a later loss may make a retry resend it);
    # not idempotent: nothing can resend it once sent, so it goes without.
    assert (HEADER in seen[0]) is idempotent


def test_a_refused_request_that_stays_refused_raises_a_nexus_error(leakcheck: None) -> None:
    with RestartableServer(EmbeddedServer()) as down:
        down.kill()
        with _client(down.url, EventBus()) as client, pytest.raises(NexusError):
            client.request(b"order", 1)


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
