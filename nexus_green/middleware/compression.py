"""Adaptive request compression: the middleware, the analyzer, the chooser and zstd dictionaries (layer L4).

The codecs themselves (gzip, lz4 frame, zstd, brotli) and their Tp bits live
in :mod:`nexus_green.protocol.compression`; this module decides *whether* and
*which*, runs big jobs off the hub (:func:`~nexus_green.middleware.offload.run_off_hub`)
and keeps the figures.

:class:`CompressionMiddleware` (order 500, innermost) compresses the request
body, replaces it and sets ``request.context["tp"]`` to the codec's Tp bits;
the Client sends those bits and decodes compressed responses itself.

Adaptive choice (:func:`choose_compression`, after the NexusKit plan):

1. body under ``min_size`` (1 KB): no compression (or a zstd dictionary, if one is set);
2. latency-sensitive: lz4;
3. bandwidth-constrained: brotli;
4. otherwise the codec the :class:`CompressionAnalyzer` measured as best on
   live traffic: the highest throughput, i.e. the lowest estimated time per
   message, ``max(CPU time, wire time)`` (compression is offloaded and
   overlaps the transmission of other requests), with a few samples of each
   codec first and a periodic re-probe so it can switch when the traffic
   changes -- or none, when sending the bytes plain is faster.

Rules 2 and 3 are overrides: they apply when the caller states them
(settings or ``request.context``); the analyzer never guesses them.

Levels: ``none``, ``fastest``, ``balanced``, ``best``, or ``adaptive``
(``balanced``, and ``fastest`` for bodies of 1 MB or more; ``fastest`` for lz4).

Example::

    >>> from nexus_green.protocol.messages import Request, Response
    >>> mw = CompressionMiddleware(algorithm="zstd", level="balanced")
    >>> def wire(req):
    ...     return Response(body=b"%d bytes, tp=0x%02x" % (len(req.body), req.context.get("tp", 0)))
    >>> mw(Request(body=b'{"k": "v"}' * 500), wire).body   # 5000 bytes on the wire as ~32
    b'3... bytes, tp=0x80'
    >>> mw(Request(body=b"tiny"), wire).body
    b'4 bytes, tp=0x00'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

import zstandard

from ..errors import CompressionError, ConfigurationError
from ..events import EventBus, default_bus
from ..pipeline import ORDER_COMPRESSION, Handler
from ..protocol.compression import (
    CODECS,
    BodyDecoder,
    ContextPool,
    ZstdDecoder,
    body_decoder,
    decompress_body,
    get_codec,
    try_decompress,
)
from ..protocol.frames import DEFAULT_MAX_FRAME_SIZE, TP_CODEC_MASK, TP_GZIP
from ..protocol.messages import Request, Response
from .offload import DEFAULT_OFFLOAD_THRESHOLD, run_off_hub

__all__ = [
    "LEVELS",
    "CompressionChoice",
    "AlgorithmStats",
    "CompressionAnalyzer",
    "choose_compression",
    "ZstdDictionary",
    "DictionaryRegistry",
    "CompressionStats",
    "CompressionMiddleware",
]

LEVELS: tuple[str, ...] = ("none", "fastest", "balanced", "best", "adaptive")
"""The compression levels a middleware accepts."""

_ALGORITHMS = tuple(CODECS)
_ZSTD_BITS = CODECS["zstd"].tp_bits
_LARGE = 1024 * 1024
_TINY = 1e-12  # seconds per byte: a CPU sample below the timer's resolution
T = TypeVar("T")


def _timed(timer: Callable[[], float], fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``(fn(*args), timer delta)``, run where ``fn`` runs (inline or in a threadpool worker)."""
    t0 = timer()
    out = fn(*args)
    return out, timer() - t0


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionChoice:
    """What to do with one body: ``algorithm`` None means send it plain.

    Example::

        >>> choose_compression(100)
        CompressionChoice(algorithm=None, level='none', reason='small')
    """

    algorithm: Optional[str]
    level: str = "balanced"
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlgorithmStats:
    """Live figures of one algorithm (EWMAs over the samples).

    ``ratio`` is bytes out / bytes in; ``speed`` and ``decompress_speed`` are
    input bytes per CPU second (0.0 before a sample); ``cost`` is the
    estimated seconds per input byte of a message, ``max(cpu, wire)``, and
    ``bound`` says which of the two it is (``"cpu"`` or ``"wire"``); both None
    before any sample.

    Example::

        >>> a = CompressionAnalyzer(candidates=("lz4",), bandwidth=1e6, directions=2)
        >>> a.record("lz4", 1000, 250, 0.001, decompress_seconds=0.0005)
        >>> s = a.stats()["lz4"]
        >>> s.samples, s.ratio, round(s.speed), round(s.decompress_speed), s.bound
        (1, 0.25, 1000000, 2000000, 'cpu')
        >>> round(s.cost * 1e9)        # 1.5 us/byte of CPU vs 0.5 us/byte on the wire
        1500
    """

    algorithm: str
    samples: int
    bytes_in: int
    bytes_out: int
    ratio: float
    speed: float
    decompress_speed: float
    cost: Optional[float]
    bound: Optional[str]


class CompressionAnalyzer:
    """Tracks ratio and CPU cost per algorithm on live traffic and names the fastest choice.

    The model is one of throughput. For a message of ``n`` bytes and a codec
    with ratio ``r``:

    * CPU time: ``n`` x (compress + decompress CPU seconds per byte), both
      measured as CPU time (the sender compresses and the receiver
      decompresses; with the echo-like traffic of a client that also decodes
      the replies, each side does both);
    * wire time: ``directions`` x ``r`` x ``n`` / ``bandwidth`` (``directions``
      2: the reply is about as large and compressed the same way; 1 when
      replies are small).

    Compression of large bodies runs off the hub and the link carries other
    requests meanwhile, so the two overlap: a message costs the **larger** of
    the two, and sending it plain costs ``directions x n / bandwidth``. The
    best choice is the one with the lowest cost, plain included (unless
    ``allow_none=False``); choices within ``tolerance`` (10%) of the lowest
    count as equal and the one that uses the least CPU wins (plain uses none):
    the estimates are noisy, and CPU left over is the application's.

    CPU samples are positive noise (a cold context, a busy core), so during
    its first ``min_samples`` samples a codec's CPU estimate is the lowest
    sample seen; after that, EWMAs with weight ``alpha``.

    ``bandwidth`` (bytes/s, default 12.5e6, i.e. 100 Mbit/s) is the link the
    model assumes: tell it the real one. Each candidate is tried
    ``min_samples`` times first; afterwards every ``explore_every``-th choice
    re-probes the candidate sampled longest ago, so a change in traffic can
    move the choice. Decompression is measured on the first ``min_samples``
    records of each codec and then on one in ``decompress_every``
    (:meth:`wants_decompress_sample`). A change of the best choice counts in
    ``switches`` and emits ``compression.switched`` [from_algorithm, to_algorithm].

    Example::

        >>> a = CompressionAnalyzer(candidates=("lz4", "zstd"), min_samples=1, bandwidth=125e6)   # 1 Gbit/s
        >>> a.best(), a.best()           # each is tried once first
        ('lz4', 'zstd')
        >>> a.record("lz4", 1_000_000, 500_000, 0.002, decompress_seconds=0.001)    # fast, weak: wire 8 ms
        >>> a.record("zstd", 1_000_000, 200_000, 0.004, decompress_seconds=0.002)   # CPU 6 ms, wire 3.2 ms
        >>> a.best()
        'zstd'
    """

    def __init__(
        self,
        *,
        candidates: Sequence[str] = ("zstd", "lz4", "gzip", "brotli"),
        bandwidth: float = 12.5e6,
        directions: float = 2.0,
        tolerance: float = 0.1,
        alpha: float = 0.2,
        min_samples: int = 3,
        explore_every: int = 1000,
        decompress_every: int = 32,
        allow_none: bool = True,
        bus: Optional[EventBus] = None,
    ) -> None:
        if not candidates:
            raise ConfigurationError("CompressionAnalyzer needs at least one candidate algorithm")
        for name in candidates:
            get_codec(name)
        if not bandwidth > 0:
            raise ConfigurationError(f"bandwidth must be positive, got {bandwidth!r}")
        if not directions > 0:
            raise ConfigurationError(f"directions must be positive, got {directions!r}")
        if not 0 <= tolerance < 1:
            raise ConfigurationError(f"tolerance must be in [0, 1), got {tolerance!r}")
        if not 0 < alpha <= 1:
            raise ConfigurationError(f"alpha must be in (0, 1], got {alpha!r}")
        if decompress_every < 1:
            raise ConfigurationError(f"decompress_every must be >= 1, got {decompress_every!r}")
        self.candidates = tuple(candidates)
        self.bandwidth = float(bandwidth)
        self.directions = float(directions)
        self.tolerance = tolerance
        self.alpha = alpha
        self.min_samples = max(0, min_samples)
        self.explore_every = explore_every
        self.decompress_every = decompress_every
        self.allow_none = allow_none
        self.bus = bus if bus is not None else default_bus
        self._samples: dict[str, int] = {c: 0 for c in self.candidates}
        self._bytes: dict[str, tuple[int, int]] = {c: (0, 0) for c in self.candidates}
        self._ratio: dict[str, float] = {}
        self._cpu: dict[str, float] = {}  # compress CPU seconds per input byte
        self._dcpu: dict[str, float] = {}  # decompress CPU seconds per input (plain) byte
        self._dsamples: dict[str, int] = {c: 0 for c in self.candidates}
        self._since_d: dict[str, int] = {c: 0 for c in self.candidates}
        self._last_seen: dict[str, int] = {c: -1 for c in self.candidates}
        self._issued: dict[str, int] = {c: 0 for c in self.candidates}
        self._seq = 0
        self._choices = 0
        self.current: Optional[str] = None
        self.switches = 0
        self._best: Optional[str] = None  # cached until the next record()

    def _ewma(self, table: dict[str, float], algorithm: str, value: float, warm: bool = False) -> None:
        old = table.get(algorithm)
        if old is None:
            table[algorithm] = value
        elif warm:  # still probing: keep the lowest sample
            table[algorithm] = min(old, value)
        else:
            table[algorithm] = (1 - self.alpha) * old + self.alpha * value

    def record(
        self,
        algorithm: str,
        size_in: int,
        size_out: int,
        seconds: float,
        *,
        decompress_seconds: Optional[float] = None,
    ) -> None:
        """Feed one measured compression: sizes in bytes, ``seconds`` of CPU to compress.

        ``decompress_seconds`` is the CPU time to decompress the result, when
        it was measured (see :meth:`wants_decompress_sample`); until a codec
        has one, its decompression counts as free.
        """
        if algorithm not in self._samples or size_in <= 0:
            return
        self._ewma(self._ratio, algorithm, size_out / size_in)
        self._ewma(self._cpu, algorithm, max(seconds / size_in, _TINY), self._samples[algorithm] < self.min_samples)
        if decompress_seconds is not None:
            warm = self._dsamples[algorithm] < self.min_samples
            self._ewma(self._dcpu, algorithm, max(decompress_seconds / size_in, _TINY), warm)
            self._dsamples[algorithm] += 1
            self._since_d[algorithm] = 0
        else:
            self._since_d[algorithm] += 1
        self._samples[algorithm] += 1
        bi, bo = self._bytes[algorithm]
        self._bytes[algorithm] = (bi + size_in, bo + size_out)
        self._seq += 1
        self._last_seen[algorithm] = self._seq
        self._best = None

    def wants_decompress_sample(self, algorithm: str) -> bool:
        """Whether the next :meth:`record` of ``algorithm`` should come with ``decompress_seconds``.

        Example::

            >>> a = CompressionAnalyzer(candidates=("lz4",), min_samples=1, decompress_every=2)
            >>> a.wants_decompress_sample("lz4"), a.wants_decompress_sample("gzip")
            (True, False)
            >>> a.record("lz4", 100, 50, 1e-6, decompress_seconds=1e-7)
            >>> a.wants_decompress_sample("lz4")
            False
        """
        n = self._dsamples.get(algorithm)
        if n is None:
            return False
        return n < max(1, self.min_samples) or self._since_d[algorithm] + 1 >= self.decompress_every

    def cpu_cost(self, algorithm: str) -> Optional[float]:
        """CPU seconds per input byte: compress plus decompress (None before a sample)."""
        cpu = self._cpu.get(algorithm)
        if cpu is None:
            return None
        return cpu + self._dcpu.get(algorithm, 0.0)

    def wire_cost(self, algorithm: str) -> Optional[float]:
        """Link seconds per input byte: the compressed bytes, ``directions`` times, over ``bandwidth``."""
        ratio = self._ratio.get(algorithm)
        if ratio is None:
            return None
        return self.directions * ratio / self.bandwidth

    @property
    def plain_cost(self) -> float:
        """Seconds per byte of sending it plain: ``directions / bandwidth``."""
        return self.directions / self.bandwidth

    def cost(self, algorithm: str) -> Optional[float]:
        """Estimated seconds per input byte of a message: ``max(cpu_cost, wire_cost)``."""
        cpu = self.cpu_cost(algorithm)
        if cpu is None:
            return None
        wire = self.directions * self._ratio[algorithm] / self.bandwidth
        return cpu if cpu > wire else wire

    def best(self) -> str:
        """The algorithm for the next body (may be an exploration probe), or ``"none"``.

        ``"none"`` (only with ``allow_none``) when sending the bytes plain over
        the assumed link is about as fast as (within ``tolerance``) or faster
        than with any candidate.
        """
        self._choices += 1
        for c in self.candidates:
            if self._issued[c] < self.min_samples:
                self._issued[c] += 1
                return c
        if self.explore_every and self._choices % self.explore_every == 0:
            return min(self.candidates, key=lambda c: self._last_seen[c])
        best = self._best
        if best is not None:
            return best
        measured = [c for c in self.candidates if c in self._cpu]
        if not measured:  # probes handed out, no result back yet
            return self.candidates[0]
        costs = {c: (self.cost(c) or 0.0, self.cpu_cost(c) or 0.0) for c in measured}
        if self.allow_none:
            costs["none"] = (self.plain_cost, 0.0)
        limit = min(cost for cost, _ in costs.values()) * (1 + self.tolerance)
        best = min((c for c, (cost, _) in costs.items() if cost <= limit), key=lambda c: costs[c][1])
        self._best = best
        if best != self.current:
            if self.current is not None:
                self.switches += 1
                if self.bus.wants("compression.switched"):
                    self.bus.emit("compression.switched", from_algorithm=self.current, to_algorithm=best)
            self.current = best
        return best

    def stats(self) -> dict[str, AlgorithmStats]:
        """Figures per candidate algorithm."""
        out = {}
        for c in self.candidates:
            cost = self.cost(c)
            cpu = self._cpu.get(c)
            dcpu = self._dcpu.get(c)
            out[c] = AlgorithmStats(
                algorithm=c,
                samples=self._samples[c],
                bytes_in=self._bytes[c][0],
                bytes_out=self._bytes[c][1],
                ratio=self._ratio.get(c, 1.0),
                speed=1.0 / cpu if cpu else 0.0,
                decompress_speed=1.0 / dcpu if dcpu else 0.0,
                cost=cost,
                bound=None if cost is None else ("cpu" if cost == self.cpu_cost(c) else "wire"),
            )
        return out

    def __repr__(self) -> str:
        return f"<CompressionAnalyzer current={self.current} switches={self.switches}>"


def choose_compression(
    size: int,
    *,
    min_size: int = 1024,
    latency_sensitive: bool = False,
    bandwidth_constrained: bool = False,
    analyzer: Optional[CompressionAnalyzer] = None,
    level: str = "adaptive",
) -> CompressionChoice:
    """The adaptive rule (module docstring) for a body of ``size`` bytes.

    Example::

        >>> choose_compression(50_000, latency_sensitive=True)
        CompressionChoice(algorithm='lz4', level='fastest', reason='latency_sensitive')
        >>> choose_compression(50_000, bandwidth_constrained=True).algorithm
        'brotli'
        >>> choose_compression(2_000_000)
        CompressionChoice(algorithm='zstd', level='fastest', reason='balanced')
    """
    if level == "none":
        return CompressionChoice(algorithm=None, level="none", reason="level_none")
    if size < min_size:
        return CompressionChoice(algorithm=None, level="none", reason="small")
    if latency_sensitive:
        return CompressionChoice(
            algorithm="lz4", level="fastest" if level == "adaptive" else level, reason="latency_sensitive"
        )
    if bandwidth_constrained:
        return CompressionChoice(
            algorithm="brotli", level="balanced" if level == "adaptive" else level, reason="bandwidth_constrained"
        )
    algorithm = analyzer.best() if analyzer is not None else "zstd"
    if algorithm == "none":
        return CompressionChoice(algorithm=None, level="none", reason="link_faster_than_compression")
    if level == "adaptive":
        level = "fastest" if size >= _LARGE or algorithm == "lz4" else "balanced"
    return CompressionChoice(algorithm=algorithm, level=level, reason="balanced")


# --- zstd dictionaries -------------------------------------------------------------


class ZstdDictionary:
    """A zstd dictionary: makes small, similar messages compress well.

    zstd frames carry the dictionary id, so the receiver can pick the right
    one -- but it must *have* it: both sides register the same dictionary
    (ship :meth:`as_bytes` to the server out of band) in a
    :class:`DictionaryRegistry` under its :attr:`dict_id`. Decompression is
    bounded like the plain codecs'.

    Example::

        >>> samples = [b'{"user": %d, "name": "user-%d", "active": true}' % (i, i) for i in range(400)]
        >>> d = ZstdDictionary.train(samples, size=2048, dict_id=7)
        >>> blob = d.compress(samples[3])
        >>> d.dict_id, len(blob) < len(samples[3]), d.decompress(blob) == samples[3]
        (7, True, True)
    """

    __slots__ = ("_dict", "dict_id", "_compressors", "_decompressors")

    def __init__(self, data: bytes) -> None:
        try:
            self._dict = zstandard.ZstdCompressionDict(bytes(data), dict_type=zstandard.DICT_TYPE_FULLDICT)
            self._dict.precompute_compress(level=3)  # validates the tables now, not on first use
        except zstandard.ZstdError as exc:
            raise ConfigurationError(f"not a zstd dictionary: {exc}") from exc
        self.dict_id = self._dict.dict_id()
        if self.dict_id == 0:
            raise ConfigurationError("zstd dictionary has id 0; train it with a dict_id so receivers can find it")
        # Contexts are reused (building one with a dictionary costs tens of us) but never shared:
        # offloaded calls run in real threads (see ContextPool).
        self._compressors: dict[int, ContextPool[zstandard.ZstdCompressor]] = {}
        self._decompressors: ContextPool[zstandard.ZstdDecompressor] = ContextPool(
            lambda: zstandard.ZstdDecompressor(dict_data=self._dict), max_free=8
        )

    @classmethod
    def train(cls, samples: Iterable[bytes], *, size: int = 16 * 1024, dict_id: int = 0) -> ZstdDictionary:
        """Train a dictionary of at most ``size`` bytes from sample messages.

        ``dict_id`` 0 lets zstd pick a random id. Too few or too uniform
        samples raise :class:`~nexus_green.errors.ConfigurationError`.
        """
        data: list[bytes | bytearray | memoryview] = [bytes(s) for s in samples]
        try:
            trained = zstandard.train_dictionary(size, data, dict_id=dict_id)
        except zstandard.ZstdError as exc:
            raise ConfigurationError(f"cannot train a zstd dictionary from {len(data)} samples: {exc}") from exc
        return cls(trained.as_bytes())

    def as_bytes(self) -> bytes:
        """The dictionary's bytes, to register on the other side."""
        return bytes(self._dict.as_bytes())

    def compress(self, data: bytes, level: str = "balanced") -> bytes:
        """A zstd frame of ``data`` made with this dictionary (the frame names its id)."""
        n = CODECS["zstd"].level(level)
        pool = self._compressors.get(n)
        if pool is None:
            pool = self._compressors.setdefault(
                n, ContextPool(lambda: zstandard.ZstdCompressor(level=n, dict_data=self._dict, write_checksum=True))
            )
        comp = pool.take()
        out = bytes(comp.compress(bytes(data)))
        pool.give(comp, size=len(data))
        return out

    def decompress(self, data: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
        """Undo :meth:`compress` in one go, refusing output above ``max_size`` bytes.

        Example::

            >>> samples = [b'{"n": %d, "kind": "tick", "ok": true}' % i for i in range(300)]
            >>> d = ZstdDictionary.train(samples, size=1024, dict_id=9)
            >>> d.decompress(d.compress(samples[7])) == samples[7]
            True
        """
        out = self.try_decompress(data, max_size, max_size)
        return self.decoder(data, max_size).run() if out is None else out

    def try_decompress(self, data: bytes, max_size: int, max_output: int) -> Optional[bytes]:
        """:func:`~nexus_green.protocol.compression.try_decompress` with this dictionary: one bounded call, or None.

        Example::

            >>> samples = [b'{"n": %d, "kind": "tick", "ok": true}' % i for i in range(300)]
            >>> d = ZstdDictionary.train(samples, size=1024, dict_id=9)
            >>> d.try_decompress(d.compress(samples[5]), 1 << 20, 4096) == samples[5]
            True
        """
        return try_decompress(_ZSTD_BITS, data, max_size, max_output, zstd_contexts=self._decompressors)

    def decoder(self, data: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> ZstdDecoder:
        """An incremental decoder of a frame made with this dictionary (see :class:`~nexus_green.protocol.compression.BodyDecoder`).

        Example::

            >>> samples = [b'{"n": %d, "kind": "tick", "ok": true}' % i for i in range(300)]
            >>> d = ZstdDictionary.train(samples, size=1024, dict_id=9)
            >>> d.decoder(d.compress(samples[5] * 1000)).run() == samples[5] * 1000
            True
        """
        return ZstdDecoder(data, max_size, contexts=self._decompressors, dict_id=self.dict_id)

    def __repr__(self) -> str:
        return f"<ZstdDictionary id={self.dict_id} size={len(self._dict)}>"


class DictionaryRegistry:
    """Dictionaries by id, and a decoder that uses them for zstd bodies that name one.

    A Client given a registry (``Client(url, dictionaries=registry)``) decodes
    responses with :meth:`try_decompress` and :meth:`decoder`, which pick the
    dictionary a zstd frame names and fall back to the plain codecs for
    everything else; :meth:`decompress` does the same in one go.

    Example::

        >>> samples = [b'{"id": %d, "kind": "event", "ok": true}' % i for i in range(300)]
        >>> reg = DictionaryRegistry([ZstdDictionary.train(samples, size=1024, dict_id=42)])
        >>> blob = reg.get(42).compress(samples[1])
        >>> reg.decompress(0x80, blob) == samples[1], 42 in reg
        (True, True)
    """

    def __init__(self, dictionaries: Iterable[ZstdDictionary] = ()) -> None:
        self._by_id: dict[int, ZstdDictionary] = {}
        for d in dictionaries:
            self.register(d)

    def register(self, dictionary: ZstdDictionary) -> None:
        """Add a dictionary; a different one under the same id is refused."""
        old = self._by_id.get(dictionary.dict_id)
        if old is not None and old.as_bytes() != dictionary.as_bytes():
            raise ConfigurationError(f"another zstd dictionary is already registered with id {dictionary.dict_id}")
        self._by_id[dictionary.dict_id] = dictionary

    def get(self, dict_id: int) -> ZstdDictionary:
        """The dictionary registered under ``dict_id``."""
        try:
            return self._by_id[dict_id]
        except KeyError:
            raise CompressionError(f"zstd body uses dictionary id {dict_id}, which is not registered") from None

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._by_id

    def _dictionary_for(self, tp: int, body: bytes) -> Optional[ZstdDictionary]:
        """The dictionary a zstd frame names (None for no dictionary, or another codec)."""
        if tp & (TP_GZIP | TP_CODEC_MASK) == _ZSTD_BITS:
            try:
                dict_id = zstandard.get_frame_parameters(body).dict_id
            except zstandard.ZstdError as exc:
                raise CompressionError(f"corrupt zstd body ({len(body)} bytes): {exc}") from exc
            if dict_id:
                return self.get(dict_id)
        return None

    def decompress(self, tp: int, body: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
        """Like ``decompress_body``, but zstd frames naming a dictionary use the registered one.

        Example::

            >>> DictionaryRegistry().decompress(0x20, get_codec("gzip").compress(b"no dictionary needed"))
            b'no dictionary needed'
        """
        dictionary = self._dictionary_for(tp, body)
        return decompress_body(tp, body, max_size) if dictionary is None else dictionary.decompress(body, max_size)

    def try_decompress(self, tp: int, body: bytes, max_size: int, max_output: int) -> Optional[bytes]:
        """Like :func:`~nexus_green.protocol.compression.try_decompress`, with the registered dictionaries.

        A frame that names an unregistered dictionary is a CompressionError at once.

        Example::

            >>> samples = [b'{"n": %d, "kind": "tick", "ok": true}' % i for i in range(300)]
            >>> reg = DictionaryRegistry([ZstdDictionary.train(samples, size=1024, dict_id=9)])
            >>> reg.try_decompress(0x80, reg.get(9).compress(samples[2]), 1 << 20, 4096) == samples[2]
            True
        """
        dictionary = self._dictionary_for(tp, body)
        if dictionary is None:
            return try_decompress(tp, body, max_size, max_output)
        return dictionary.try_decompress(body, max_size, max_output)

    def decoder(self, tp: int, body: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> BodyDecoder:
        """Like :func:`~nexus_green.protocol.compression.body_decoder`, with the registered dictionaries.

        Example::

            >>> samples = [b'{"n": %d, "kind": "tick", "ok": true}' % i for i in range(300)]
            >>> reg = DictionaryRegistry([ZstdDictionary.train(samples, size=1024, dict_id=9)])
            >>> reg.decoder(0x80, reg.get(9).compress(samples[2])).run() == samples[2]
            True
        """
        dictionary = self._dictionary_for(tp, body)
        return body_decoder(tp, body, max_size) if dictionary is None else dictionary.decoder(body, max_size)


# --- the middleware ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionStats:
    """What a compression middleware did.

    ``bytes_in`` is request bodies as given, ``bytes_out`` as sent;
    ``saved`` is ``1 - bytes_out / bytes_in``. ``per_algorithm`` maps each
    codec to ``(messages, bytes_in, bytes_out, CPU seconds compressing)``.

    Example::

        >>> CompressionMiddleware().stats().saved
        0.0
    """

    messages: int
    compressed: int
    skipped: int
    incompressible: int
    offloaded: int
    dictionary: int
    bytes_in: int
    bytes_out: int
    saved: float
    per_algorithm: Mapping[str, tuple[int, int, int, float]] = field(default_factory=dict)


class CompressionMiddleware:
    """Compresses request bodies (order 500, next to the wire). See the module docstring.

    ``algorithm`` is ``"adaptive"`` or a codec name (gzip, lz4, zstd,
    brotli); ``level`` one of :data:`LEVELS`. ``strict=True`` uses gzip only,
    the one codec a NexusKit peer knows. Bodies of ``offload_threshold`` bytes
    or more are compressed in gevent's threadpool. The analyzer is fed CPU
    time, read with ``cpu_timer`` (default :func:`time.thread_time`, in the
    thread that does the work, so waiting for the hub or the threadpool is not
    counted); inject a fake timer in tests. ``dictionary`` (zstd)
    compresses bodies under ``min_size`` (and zstd choices) with it -- only
    for peers that registered it. A result no smaller than the input is sent
    plain. Per request, ``request.context`` may set ``"compression"`` (a codec
    name or ``"none"``), ``"latency_sensitive"`` and ``"bandwidth_constrained"``.

    Example::

        >>> mw = CompressionMiddleware(latency_sensitive=True)
        >>> sent = []
        >>> _ = mw(Request(body=b"abc" * 1000), lambda r: sent.append(r.context["tp"]) or Response())
        >>> sent, mw.stats().per_algorithm["lz4"][0]
        ([64], 1)
    """

    order = ORDER_COMPRESSION

    def __init__(
        self,
        algorithm: str = "adaptive",
        level: str = "adaptive",
        *,
        min_size: int = 1024,
        latency_sensitive: bool = False,
        bandwidth_constrained: bool = False,
        analyzer: Optional[CompressionAnalyzer] = None,
        strict: bool = False,
        offload_threshold: int = DEFAULT_OFFLOAD_THRESHOLD,
        dictionary: Optional[ZstdDictionary] = None,
        dictionary_min_size: int = 32,
        cpu_timer: Callable[[], float] = time.thread_time,
        name: str = "compression",
    ) -> None:
        if level not in LEVELS:
            raise ConfigurationError(f"unknown compression level {level!r}; use one of {', '.join(LEVELS)}")
        if algorithm != "adaptive":
            get_codec(algorithm)
        if strict:
            if algorithm not in ("adaptive", "gzip") or dictionary is not None:
                raise ConfigurationError("strict=True (NexusKit peer) allows gzip only, without dictionaries")
            algorithm = "gzip"
        self.algorithm = algorithm
        self.level = level
        self.min_size = min_size
        self.latency_sensitive = latency_sensitive
        self.bandwidth_constrained = bandwidth_constrained
        self.analyzer = analyzer if analyzer is not None or algorithm != "adaptive" else CompressionAnalyzer()
        self.strict = strict
        self.offload_threshold = offload_threshold
        self.dictionary = dictionary
        self.dictionary_min_size = dictionary_min_size
        self.cpu_timer = cpu_timer
        self.name = name
        self._messages = 0
        self._compressed = 0
        self._skipped = 0
        self._incompressible = 0
        self._offloaded = 0
        self._dictionary = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._per: dict[str, tuple[int, int, int, float]] = {}

    @property
    def bus(self) -> Optional[EventBus]:
        """The bus its analyzer emits on, None without one (see :func:`nexus_green.pipeline.bus_of`)."""
        return self.analyzer.bus if self.analyzer is not None else None

    def choose(self, request: Request) -> CompressionChoice:
        """The choice for this request (settings, then per-request context overrides)."""
        ctx = request.context
        size = len(request.body)
        forced = ctx.get("compression")
        if forced is not None:
            if forced == "none":
                return CompressionChoice(algorithm=None, level="none", reason="context")
            get_codec(forced)
            if self.strict and forced != "gzip":
                raise ConfigurationError(f"strict mode allows gzip only, request asked for {forced!r}")
            level = "balanced" if self.level in ("adaptive", "none") else self.level
            return CompressionChoice(algorithm=forced, level=level, reason="context")
        if self.algorithm != "adaptive":
            if self.level == "none":
                return CompressionChoice(algorithm=None, level="none", reason="level_none")
            if size < self.min_size:
                return CompressionChoice(algorithm=None, level="none", reason="small")
            level = self.level
            if level == "adaptive":
                level = "fastest" if size >= _LARGE or self.algorithm == "lz4" else "balanced"
            return CompressionChoice(algorithm=self.algorithm, level=level, reason="configured")
        return choose_compression(
            size,
            min_size=self.min_size,
            latency_sensitive=bool(ctx.get("latency_sensitive", self.latency_sensitive)),
            bandwidth_constrained=bool(ctx.get("bandwidth_constrained", self.bandwidth_constrained)),
            analyzer=self.analyzer,
            level=self.level,
        )

    def _skip(self, request: Request, call_next: Handler, size: int) -> Response:
        self._skipped += 1
        self._bytes_in += size
        self._bytes_out += size
        return call_next(request)

    def __call__(self, request: Request, call_next: Handler) -> Response:
        body = request.body
        size = len(body)
        self._messages += 1
        ctx = request.context
        if not size or ctx.get("tp", 0) & (TP_GZIP | TP_CODEC_MASK):
            return self._skip(request, call_next, size)  # empty, or compressed by someone already
        if size < self.min_size and self.dictionary is None and ctx.get("compression") is None:
            return self._skip(request, call_next, size)  # small: what choose() says, without building a choice
        choice = self.choose(request)
        use_dict = self.dictionary is not None and (
            choice.algorithm == "zstd"
            or (choice.algorithm is None and choice.reason == "small" and size >= self.dictionary_min_size)
        )
        if choice.algorithm is None and not use_dict:
            return self._skip(request, call_next, size)
        algorithm = "zstd" if use_dict else choice.algorithm
        assert algorithm is not None
        codec = get_codec(algorithm)
        level = choice.level if choice.level not in ("none", "adaptive") else "balanced"
        threshold = self.offload_threshold
        timer = self.cpu_timer
        if use_dict:
            assert self.dictionary is not None
            blob, seconds = run_off_hub(
                _timed, timer, self.dictionary.compress, body, level, size=size, threshold=threshold
            )
        else:
            blob, seconds = run_off_hub(_timed, timer, codec.compress, body, level, size=size, threshold=threshold)
        self._offloaded += size >= threshold
        analyzer = self.analyzer
        if analyzer is not None and not use_dict:
            dsec: Optional[float] = None
            if analyzer.wants_decompress_sample(algorithm):  # what the receiver will spend, now and then
                _, dsec = run_off_hub(_timed, timer, codec.decompress, blob, size=size, threshold=threshold)
            analyzer.record(algorithm, size, len(blob), seconds, decompress_seconds=dsec)
        if len(blob) >= size:
            self._incompressible += 1
            return self._skip(request, call_next, size)
        n, bi, bo, secs = self._per.get(algorithm, (0, 0, 0, 0.0))
        self._per[algorithm] = (n + 1, bi + size, bo + len(blob), secs + seconds)
        self._compressed += 1
        self._dictionary += use_dict
        self._bytes_in += size
        self._bytes_out += len(blob)
        context = dict(request.context)
        context["tp"] = context.get("tp", 0) | codec.tp_bits
        context["compressed_with"] = algorithm
        return call_next(request.replace(body=blob, context=context))

    def stats(self) -> CompressionStats:
        """Figures so far."""
        return CompressionStats(
            messages=self._messages,
            compressed=self._compressed,
            skipped=self._skipped,
            incompressible=self._incompressible,
            offloaded=self._offloaded,
            dictionary=self._dictionary,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            saved=1 - self._bytes_out / self._bytes_in if self._bytes_in else 0.0,
            per_algorithm=dict(self._per),
        )

    def __repr__(self) -> str:
        return f"<CompressionMiddleware {self.algorithm}/{self.level} messages={self._messages}>"
