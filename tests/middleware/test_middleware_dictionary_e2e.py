"""zstd dictionaries end to end: a Client with ``dictionaries=`` decodes dictionary-compressed replies.

The peer is a small gevent server speaking the protocol that, like a real
server with the dictionary registered, decodes dictionary-compressed requests
and answers with dictionary-compressed bodies (Tp 0x80). EmbeddedServer
compresses replies with the plain codecs only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from gevent.server import StreamServer

from nexus_green import Client
from nexus_green.errors import CompressionError
from nexus_green.middleware import CompressionMiddleware, DictionaryRegistry, ZstdDictionary
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame

pytestmark = pytest.mark.usefixtures("leakcheck")

ZSTD = 0x80
SAMPLES = [
    json.dumps({"user": i, "event": "login", "ok": True, "region": ["eu", "us", "ap"][i % 3]}).encode()
    for i in range(600)
]


@pytest.fixture(scope="module")
def dictionary() -> ZstdDictionary:
    return ZstdDictionary.train(SAMPLES, size=2048, dict_id=4242)


class DictPeer:
    """Echoes each request body back compressed with ``dictionary``; fid 2 replies with ``big``, fid 3 plain."""

    def __init__(self, dictionary: ZstdDictionary, big: bytes = b"") -> None:
        self.registry = DictionaryRegistry([dictionary])
        self.dictionary = dictionary
        self.big = big
        self.request_tps: list[int] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def _handle(self, sock: Any, addr: Any) -> None:
        decoder = FrameDecoder()
        with sock:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for f in decoder.feed(data):
                    self.request_tps.append(f.tp)
                    body = self.registry.decompress(f.tp, f.body)
                    if f.fid == 3:
                        reply, tp = body, 0
                    else:
                        reply, tp = self.dictionary.compress(self.big if f.fid == 2 else body), ZSTD
                    sock.sendall(encode_frame(Frame(qid=f.qid, fid=f.fid, code=200, res=1, tp=tp, body=reply)))

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def peer(dictionary: ZstdDictionary) -> Iterator[DictPeer]:
    rng = random.Random(5)
    big = json.dumps([{"user": i, "token": f"{rng.getrandbits(128):032x}"} for i in range(6000)]).encode()
    p = DictPeer(dictionary, big=big)
    p.server.start()
    try:
        yield p
    finally:
        p.server.stop(timeout=2)


def test_dictionary_compressed_replies_decode(peer: DictPeer, dictionary: ZstdDictionary) -> None:
    registry = DictionaryRegistry([dictionary])
    with Client(peer.url, heartbeat_interval=None, dictionaries=registry) as c:
        assert c.dictionaries is registry
        r = c.request(SAMPLES[7], fid=1, timeout=5)
        assert r.body == SAMPLES[7]
        assert r.tp & 0xE0 == 0  # decoded: no codec bits left
        assert peer.request_tps == [0]


def test_both_directions_use_the_dictionary(peer: DictPeer, dictionary: ZstdDictionary) -> None:
    mw = CompressionMiddleware(dictionary=dictionary)
    with Client(
        peer.url, heartbeat_interval=None, middlewares=[mw], dictionaries=DictionaryRegistry([dictionary])
    ) as c:
        for i in range(20):
            assert c.request(SAMPLES[i], fid=1, timeout=5).body == SAMPLES[i]
    assert peer.request_tps == [ZSTD] * 20
    stats = mw.stats()
    assert stats.dictionary == 20 and stats.bytes_out < stats.bytes_in / 2


def test_a_large_dictionary_body_decodes_off_the_hub(peer: DictPeer, dictionary: ZstdDictionary) -> None:
    assert len(dictionary.compress(peer.big)) > 64 * 1024  # above the Client's offload threshold
    with Client(peer.url, heartbeat_interval=None, dictionaries=DictionaryRegistry([dictionary])) as c:
        assert c.request(b"big please", fid=2, timeout=5).body == peer.big


def test_without_the_dictionary_the_reply_is_a_clear_error(peer: DictPeer) -> None:
    with Client(peer.url, heartbeat_interval=None) as c, pytest.raises(CompressionError, match="corrupt zstd"):
        c.request(SAMPLES[1], fid=1, timeout=5)


def test_an_unregistered_dictionary_id_is_named(peer: DictPeer) -> None:
    other = ZstdDictionary.train(SAMPLES, size=2048, dict_id=99)
    with Client(peer.url, heartbeat_interval=None, dictionaries=DictionaryRegistry([other])) as c:
        with pytest.raises(CompressionError, match="dictionary id 4242, which is not registered"):
            c.request(SAMPLES[1], fid=1, timeout=5)
        assert c.request(b"plain", fid=3, timeout=5).body == b"plain"  # the connection still serves
