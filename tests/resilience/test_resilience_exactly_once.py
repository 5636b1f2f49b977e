"""Chaos test: lost responses, client retries with one idempotency key, server applies each request once.

Between a real Client (ResilienceMiddleware: retry of idempotent requests,
one idempotency key per logical request) and an EmbeddedServer sits a TCP
proxy that swallows response frames: for a fixed, seeded set of logical
operations the response to the *first* attempt is dropped after the server
has applied the operation. The client's attempt times out (RequestTimeout
abandons only that Qid) and the retry carries the same key. With the
server's IdempotencyGuard every operation is applied exactly once and every
caller gets the result of that one application; without it the same run
applies the dropped operations twice (the test can fail).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Optional

import gevent
import gevent.pool
import gevent.socket
import pytest
from gevent.server import StreamServer

from nexus_green import Client
from nexus_green.errors import RequestTimeout
from nexus_green.events import EventBus
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame
from nexus_green.resilience import IdempotencyGuard, ResilienceConfiguration, RetryConfig, TimeoutConfig
from nexus_green.resilience.idempotency import HEADER
from nexus_green.resilience.middleware import ResilienceMiddleware
from nexus_green.testing import EmbeddedServer

FID_APPLY = 40
OPERATIONS = 60
DROP_RATE = 0.3


class ResponseDroppingProxy:
    """Forwards client bytes verbatim; drops the response to the first attempt of chosen operations."""

    def __init__(self, upstream: tuple[str, int], drop_ops: set[int]) -> None:
        self.upstream = upstream
        self.drop_ops = drop_ops
        self.seen_keys: set[str] = set()
        self.first_attempt_qids: dict[int, int] = {}  # qid -> op, for first attempts of dropped ops
        self.dropped: list[int] = []
        self.attempts: Counter[int] = Counter()
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.tasks: list[gevent.Greenlet] = []

    def start(self) -> str:
        self.server.start()
        return f"tcp://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.stop(timeout=1)
        gevent.killall(self.tasks, timeout=1)

    def _handle(self, client: Any, _addr: Any) -> None:
        upstream = gevent.socket.create_connection(self.upstream)
        up = gevent.spawn(self._client_to_server, client, upstream)
        self.tasks.append(up)
        try:
            self._server_to_client(upstream, client)
        finally:
            up.kill()
            upstream.close()
            client.close()

    def _client_to_server(self, client: Any, upstream: Any) -> None:
        decoder = FrameDecoder()
        while True:
            data = client.recv(65536)
            if not data:
                return
            for frame in decoder.feed(data):
                self._note_request(frame)
            upstream.sendall(data)

    def _note_request(self, frame: Frame) -> None:
        key = frame.headers.get(HEADER)
        assert key is not None, "every attempt carries the idempotency key"
        op = int(frame.body.split(b"-")[1])
        self.attempts[op] += 1
        if key not in self.seen_keys:
            self.seen_keys.add(key)
            if op in self.drop_ops:
                self.first_attempt_qids[frame.qid] = op

    def _server_to_client(self, upstream: Any, client: Any) -> None:
        decoder = FrameDecoder()
        while True:
            data = upstream.recv(65536)
            if not data:
                return
            kept = []
            for frame in decoder.feed(data):
                op = self.first_attempt_qids.pop(frame.qid, None)
                if op is not None:
                    self.dropped.append(op)  # the response is lost on the way back
                    continue
                kept.append(encode_frame(frame))
            if kept:
                client.sendall(b"".join(kept))


def run_chaos(guard: Optional[IdempotencyGuard]) -> tuple[dict[int, int], dict[int, bytes], ResponseDroppingProxy, Any]:
    rng = random.Random(20240611)
    drop_ops = {op for op in range(OPERATIONS) if rng.random() < DROP_RATE}
    applied: Counter[int] = Counter()

    def apply(frame: Frame) -> bytes:
        op = int(frame.body.split(b"-")[1])
        applied[op] += 1
        return b"applied-%d-time-%d" % (op, applied[op])

    server = EmbeddedServer(handlers={FID_APPLY: apply}, idempotency=guard).start()
    proxy = ResponseDroppingProxy(server.address, drop_ops)
    url = proxy.start()
    bus = EventBus()
    timeouts: list[Any] = []
    bus.subscribe(lambda e: timeouts.append(e.attrs["error"]), prefix="retry.attempt")
    middleware = ResilienceMiddleware(
        ResilienceConfiguration(
            retry=RetryConfig(max_attempts=4, base_delay=0.001, max_delay=0.001),
            timeout=TimeoutConfig(request=0.2, overall=10.0),
            breaker=None,
        ),
        bus=bus,
    )
    results: dict[int, bytes] = {}
    client = Client(url, middlewares=[middleware], bus=bus, timeout=0.2, heartbeat_interval=None)
    try:

        def logical_request(op: int) -> None:
            results[op] = client.request(b"op-%d" % op, fid=FID_APPLY, idempotent=True).body

        pool = gevent.pool.Pool(20)
        for op in range(OPERATIONS):
            pool.spawn(logical_request, op)
        assert pool.join(timeout=30, raise_error=True)
    finally:
        client.close()
        proxy.stop()
        server.stop()
    assert drop_ops and sorted(proxy.dropped) == sorted(drop_ops)  # the chaos really happened
    assert all(isinstance(e, RequestTimeout) for e in timeouts) and len(timeouts) == len(drop_ops)
    return dict(applied), results, proxy, server


def test_each_logical_request_is_applied_exactly_once_despite_lost_responses(leakcheck: None) -> None:
    applied, results, proxy, server = run_chaos(IdempotencyGuard(window=60.0))
    assert applied == {op: 1 for op in range(OPERATIONS)}  # server side: once per logical request
    assert sum(applied.values()) == OPERATIONS
    # Every caller got the result of the one application (replayed for the retried ones).
    assert results == {op: b"applied-%d-time-1" % op for op in range(OPERATIONS)}
    # The retried operations were sent twice and answered from the guard.
    assert {op for op, n in proxy.attempts.items() if n > 1} == proxy.drop_ops
    assert all(proxy.attempts[op] == 2 for op in proxy.drop_ops)
    assert server.replays == len(proxy.drop_ops)


def test_without_the_guard_lost_responses_cause_duplicates(leakcheck: None) -> None:
    applied, results, proxy, server = run_chaos(None)
    duplicated = {op for op, n in applied.items() if n > 1}
    assert duplicated == proxy.drop_ops  # each lost response was applied again by the retry
    assert sum(applied.values()) == OPERATIONS + len(proxy.drop_ops)
    assert all(results[op] == b"applied-%d-time-2" % op for op in proxy.drop_ops)
    assert server.replays == 0


@pytest.mark.parametrize("guard", [True, IdempotencyGuard(window=1.0)])
def test_embedded_server_guard_option(guard: Any, leakcheck: None) -> None:
    runs: Counter[bytes] = Counter()

    def handler(frame: Frame) -> bytes:
        runs[frame.body] += 1
        return b"ran %d" % runs[frame.body]

    with EmbeddedServer(handlers={FID_APPLY: handler}, idempotency=guard) as server:
        assert isinstance(server.guard, IdempotencyGuard)
        with Client(server.url, heartbeat_interval=None) as c:
            assert c.request(b"x", fid=FID_APPLY, headers={HEADER: "k1"}).body == b"ran 1"
            assert c.request(b"x", fid=FID_APPLY, headers={HEADER: "k1"}).body == b"ran 1"  # replayed
            assert c.request(b"x", fid=FID_APPLY, headers={HEADER: "k2"}).body == b"ran 2"
            assert c.request(b"x", fid=FID_APPLY).body == b"ran 3"  # no key: always runs
            assert c.request(b"e", fid=1, headers={HEADER: "k3"}).body == b"e"  # built-in echo, guarded
            assert c.request(b"f", fid=1, headers={HEADER: "k3"}).body == b"e"  # same key: first reply
        assert server.replays == 2 and server.info()["idempotent_replays"] == 2


def test_guarded_server_in_progress_failures_and_no_reply(leakcheck: None) -> None:
    from gevent.event import Event

    release = Event()
    runs: Counter[bytes] = Counter()

    def handler(frame: Frame) -> Any:
        runs[frame.body] += 1
        if frame.body == b"slow":
            release.wait(timeout=5)
            return b"slow done"
        if frame.body == b"boom" and runs[frame.body] == 1:
            raise RuntimeError("first try fails")
        if frame.body == b"silent" and runs[frame.body] == 1:
            return None  # no reply: nothing to replay
        return b"%s ok %d" % (frame.body, runs[frame.body])

    with EmbeddedServer(handlers={FID_APPLY: handler}, idempotency=True) as server:
        with Client(server.url, heartbeat_interval=None, raise_for_code=False, timeout=5) as c:
            first = gevent.spawn(c.request, b"slow", FID_APPLY, {HEADER: "slow-key"})
            gevent.sleep(0.01)
            busy = c.request(b"slow", fid=FID_APPLY, headers={HEADER: "slow-key"})
            assert (busy.code, busy.body) == (503, b"request with this idempotency key is in progress")
            release.set()
            assert first.get(timeout=5).body == b"slow done"
            assert c.request(b"slow", fid=FID_APPLY, headers={HEADER: "slow-key"}).body == b"slow done"
            assert runs[b"slow"] == 1

            assert c.request(b"boom", fid=FID_APPLY, headers={HEADER: "boom-key"}).code == 500
            assert c.request(b"boom", fid=FID_APPLY, headers={HEADER: "boom-key"}).body == b"boom ok 2"

            with pytest.raises(RequestTimeout):
                c.request(b"silent", fid=FID_APPLY, headers={HEADER: "silent-key"}, timeout=0.05)
            assert c.request(b"silent", fid=FID_APPLY, headers={HEADER: "silent-key"}).body == b"silent ok 2"
        assert server.replays == 1
