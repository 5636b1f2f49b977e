"""ProfilingReport: hot spots, allocation hot spots, an I/O summary and suggestions from rules; text, JSON, Markdown.

A report is plain data (:class:`ProfilingReport`): it can be built by hand
(the rules are tested on crafted figures) or from the profilers with
:meth:`ProfilingReport.build`. Each rule in :data:`RULES` is a function of
the report that returns a :class:`Suggestion` or None; a rule stays silent
when the figures it needs are missing.

=========================  ====================================================
rule                       fires when
=========================  ====================================================
``small_writes``           >= 50 writes averaging under 512 bytes and under
                           1.5 frames each (a system call per tiny frame)
``decoder_copying``        the frame decoder (protocol/frames.py) holds >= 15 %
                           of the request samples, or >= 25 % of the bytes of
                           the top allocation sites
``compression_tiny``       compression is on with ``min_size`` under 256
                           bytes and the average frame is under 512 bytes, or
                           compression code holds >= 5 % of the samples while
                           frames average under 1 KiB
``pool_too_small``         a checkout failed (PoolExhausted), checkouts waited
                           1 ms or more on average, or the concurrency is above
                           the pool's capacity (connections x in-flight)
``middleware_dominates``   one middleware holds >= 50 % of the time sampled
                           inside ``Client.request`` (0.1 s of it at least)
=========================  ====================================================

Example::

    >>> from nexus_green.profiling.io import IOFigures
    >>> io = IOFigures(writes=1000, reads=1000, bytes_sent=40_000, bytes_received=40_000,
    ...                frames_sent=1000, frames_received=1000, seconds=1.0)
    >>> report = ProfilingReport(title="demo", seconds=1.0, io=io)
    >>> [s.rule for s in report.suggestions()]
    ['small_writes']
    >>> print(report.to_text())  # doctest: +ELLIPSIS
    nexus_green profile: demo (1.0 s)
    I/O: 1,000 writes of 40.0 B (1.00 frames) each, 1,000 reads of 40.0 B (1.00 frames) each
         40,000 B sent, 40,000 B received
    suggestions:
      [small_writes] 1,000 writes averaging 40 B and 1.00 frames
    ...
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from .io import IOFigures
from .memory import AllocationSite, MemoryProfiler
from .sampler import SamplingProfiler

__all__ = ["HotSpot", "ProfilingReport", "Suggestion", "RULES", "middleware_shares", "file_share"]

SMALL_WRITE_BYTES = 512
SMALL_WRITE_MIN = 50
DECODER_CPU_SHARE = 0.15
DECODER_ALLOC_SHARE = 0.25
TINY_BODY = 512
TINY_MIN_SIZE = 256
COMPRESSION_CPU_SHARE = 0.05
CHECKOUT_WAIT = 0.001
MIDDLEWARE_SHARE = 0.5
MIDDLEWARE_MIN_SECONDS = 0.1
FRAME_HEADER = 24  # bytes of the NexusKit frame prefix


@dataclass(frozen=True, slots=True, kw_only=True)
class HotSpot:
    """A function's share of the sampled time: ``self_share`` in its own code, ``total_share`` with its callees.

    Example::

        >>> HotSpot(function="m.f", self_share=0.25, total_share=0.5, seconds=0.1).function
        'm.f'
    """

    function: str
    self_share: float
    total_share: float
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    """What a rule found: its name, what it saw and what to try.

    Example::

        >>> Suggestion(rule="r", finding="x is high", advice="lower x").as_dict()
        {'rule': 'r', 'finding': 'x is high', 'advice': 'lower x'}
    """

    rule: str
    finding: str
    advice: str

    def as_dict(self) -> dict[str, str]:
        """The suggestion as a dict (for JSON)."""
        return {"rule": self.rule, "finding": self.finding, "advice": self.advice}


@dataclass(kw_only=True)
class ProfilingReport:
    """The figures of one profile and the suggestions the rules draw from them (see the module docstring).

    ``decoder_share`` / ``compression_share`` are the shares of request
    samples in the frame decoder and in compression code;
    ``middleware`` maps middleware names to their share of the time sampled
    inside ``Client.request``, ``request_seconds`` in all;
    ``pool`` is a pool's ``stats()`` and ``capacity`` its connections x
    in-flight limit; ``compression_min_size`` is the compression
    middleware's ``min_size`` (None: no compression).
    """

    title: str = "profile"
    seconds: float = 0.0
    samples: int = 0
    interval: float = 0.0
    hot_spots: list[HotSpot] = field(default_factory=list)
    greenlets: dict[str, float] = field(default_factory=dict)
    allocations: list[AllocationSite] = field(default_factory=list)
    leak_suspects: list[AllocationSite] = field(default_factory=list)
    io: Optional[IOFigures] = None
    pool: Optional[dict[str, Any]] = None
    capacity: Optional[int] = None
    concurrency: Optional[int] = None
    compression_min_size: Optional[int] = None
    decoder_share: float = 0.0
    compression_share: float = 0.0
    middleware: dict[str, float] = field(default_factory=dict)
    request_seconds: float = 0.0
    throughput: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        *,
        title: str = "profile",
        sampler: Optional[SamplingProfiler] = None,
        memory: Optional[MemoryProfiler] = None,
        io: Optional[IOFigures] = None,
        client: Any = None,
        concurrency: Optional[int] = None,
        throughput: Optional[float] = None,
        limit: int = 15,
    ) -> ProfilingReport:
        """A report from whichever profilers ran, and the figures of a Client (its pool, its middlewares)."""
        report = cls(title=title, io=io, concurrency=concurrency, throughput=throughput)
        if sampler is not None:
            report.samples = sampler.samples
            report.interval = sampler.interval
            report.seconds = sampler.elapsed
            stacks = sampler.code_stacks()
            total = max(1, sum(stacks.values()))
            report.hot_spots = [
                HotSpot(function=f, self_share=own / total, total_share=all_ / total, seconds=own / 1e6)
                for f, own, all_ in sampler.functions()[:limit]
            ]
            report.greenlets = {k: v / total for k, v in sampler.greenlets().most_common()}
            report.middleware, inside = middleware_shares(stacks)
            report.request_seconds = inside / 1e6
            report.decoder_share = file_share(stacks, ("protocol/frames.py",))
            report.compression_share = file_share(stacks, ("protocol/compression.py", "middleware/compression.py"))
            if sampler.errors:
                report.notes.append(f"{sampler.errors} samples failed and were skipped")
        if memory is not None:
            report.allocations = memory.top(limit)
            report.leak_suspects = memory.leak_suspects()
        if io is not None and not report.seconds:
            report.seconds = io.seconds
        if client is not None:
            pool = client.pool
            report.pool = client.stats()
            report.capacity = pool.max_size * pool.max_in_flight
            for mw in getattr(client, "middlewares", None) or ():
                if "compress" in type(mw).__name__.lower() and hasattr(mw, "min_size"):
                    report.compression_min_size = int(mw.min_size)
        return report

    # ------------------------------------------------------------------ rules
    def suggestions(self) -> list[Suggestion]:
        """Every rule of :data:`RULES` that fires on these figures, in rule order."""
        return [s for s in (rule(self) for rule in RULES) if s is not None]

    # ------------------------------------------------------------------ output
    def as_dict(self) -> dict[str, Any]:
        """Everything in the report as plain data (what :meth:`to_json` writes)."""
        return {
            "title": self.title,
            "seconds": round(self.seconds, 3),
            "samples": self.samples,
            "interval": self.interval,
            "throughput": self.throughput,
            "concurrency": self.concurrency,
            "hot_spots": [
                {"function": h.function, "self": round(h.self_share, 4), "total": round(h.total_share, 4)}
                for h in self.hot_spots
            ],
            "greenlets": {k: round(v, 4) for k, v in self.greenlets.items()},
            "allocations": [{"site": a.site, "bytes": a.size, "blocks": a.count} for a in self.allocations],
            "leak_suspects": [{"site": a.site, "growth": a.size, "blocks": a.count} for a in self.leak_suspects],
            "io": self.io.as_dict() if self.io is not None else None,
            "pool": self.pool,
            "capacity": self.capacity,
            "middleware": {k: round(v, 4) for k, v in self.middleware.items()},
            "request_seconds": round(self.request_seconds, 4),
            "decoder_share": round(self.decoder_share, 4),
            "compression_share": round(self.compression_share, 4),
            "suggestions": [s.as_dict() for s in self.suggestions()],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(self.as_dict(), indent=2, default=str)

    def _io_line(self) -> str:
        io = self.io
        assert io is not None
        return (
            f"{io.writes:,} writes of {io.bytes_per_write:,.1f} B ({io.frames_per_write:.2f} frames) each, "
            f"{io.reads:,} reads of {io.bytes_per_read:,.1f} B ({io.frames_per_read:.2f} frames) each"
        )

    def to_text(self) -> str:
        """The report for a terminal."""
        lines = [f"nexus_green profile: {self.title} ({self.seconds:.1f} s)"]
        if self.samples:
            lines.append(f"{self.samples:,} samples every {self.interval * 1000:g} ms")
        if self.throughput is not None:
            lines.append(f"throughput: {self.throughput:,.0f} requests/s at concurrency {self.concurrency}")
        if self.hot_spots:
            lines.append("hot spots (self %, total %):")
            lines += [f"  {h.self_share * 100:5.1f} {h.total_share * 100:5.1f}  {h.function}" for h in self.hot_spots]
        if self.greenlets:
            lines.append("greenlets: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in self.greenlets.items()))
        if self.allocations:
            lines.append("allocation hot spots (live bytes, blocks):")
            lines += [f"  {a.size:>12,} {a.count:>8,}  {a.site}" for a in self.allocations]
        if self.leak_suspects:
            lines.append("leak suspects (growth over the last snapshots):")
            lines += [f"  +{a.size:,} B +{a.count:,} blocks  {a.site}" for a in self.leak_suspects]
        if self.io is not None:
            lines.append(f"I/O: {self._io_line()}")
            lines.append(f"     {self.io.bytes_sent:,} B sent, {self.io.bytes_received:,} B received")
        if self.pool is not None:
            lines.append(
                f"pool: {self.pool.get('size')} connection(s) of {self.pool.get('max_size')}, "
                f"{self.pool.get('checkouts', 0):,} checkouts, {self.pool.get('exhausted', 0)} exhausted"
            )
        if self.middleware:
            lines.append(
                "middleware share of Client.request: "
                + ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(self.middleware.items(), key=lambda kv: -kv[1]))
            )
        suggestions = self.suggestions()
        lines.append("suggestions:" if suggestions else "suggestions: none (no rule fired)")
        for s in suggestions:
            lines.append(f"  [{s.rule}] {s.finding}")
            lines.append(f"      -> {s.advice}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown (tables)."""
        out = [f"# nexus_green profile: {self.title}", ""]
        out.append(f"{self.seconds:.1f} s, {self.samples:,} samples every {self.interval * 1000:g} ms.")
        if self.throughput is not None:
            out.append(f"Throughput: {self.throughput:,.0f} requests/s at concurrency {self.concurrency}.")
        out.append("")
        if self.hot_spots:
            out += ["## Hot spots", "", "| self % | total % | function |", "|---:|---:|---|"]
            out += [
                f"| {h.self_share * 100:.1f} | {h.total_share * 100:.1f} | `{h.function}` |" for h in self.hot_spots
            ]
            out.append("")
        if self.allocations:
            out += ["## Allocation hot spots", "", "| bytes | blocks | site |", "|---:|---:|---|"]
            out += [f"| {a.size:,} | {a.count:,} | `{a.site}` |" for a in self.allocations]
            out.append("")
        if self.leak_suspects:
            out += ["## Leak suspects", "", "| growth (bytes) | blocks | site |", "|---:|---:|---|"]
            out += [f"| {a.size:,} | {a.count:,} | `{a.site}` |" for a in self.leak_suspects]
            out.append("")
        if self.io is not None:
            out += ["## I/O", "", self._io_line() + ".", ""]
        suggestions = self.suggestions()
        out += ["## Suggestions", ""]
        out += [f"- **{s.rule}**: {s.finding}. {s.advice}." for s in suggestions] or ["None: no rule fired."]
        return "\n".join(out) + "\n"

    def write(self, directory: str, stem: str = "report") -> list[str]:
        """Write ``<stem>.txt``, ``<stem>.json`` and ``<stem>.md`` into ``directory``; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for ext, text in (("txt", self.to_text() + "\n"), ("json", self.to_json()), ("md", self.to_markdown())):
            path = os.path.join(directory, f"{stem}.{ext}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        return paths


# ---------------------------------------------------------------------- stack analysis
def _is_request(code: Any) -> bool:
    return code.co_name == "request" and code.co_filename.endswith(os.path.join("nexus_green", "client.py"))


def _is_terminal(code: Any) -> bool:
    return code.co_name == "_terminal" and code.co_filename.endswith(os.path.join("nexus_green", "client.py"))


def _is_middleware(code: Any) -> bool:
    # The pipeline contract: __call__(self, request, call_next) on a middleware class.
    return code.co_name == "__call__" and "call_next" in code.co_varnames[: code.co_argcount]


def middleware_shares(stacks: Counter[tuple[Any, ...]]) -> tuple[dict[str, float], int]:
    """Each middleware's share of the sampled time inside ``Client.request`` (its own code and what it calls, not the wire).

    A sample inside the request belongs to the innermost middleware
    ``__call__`` on its stack, unless the stack has reached the Client's
    terminal handler (the wire), which is nobody's. Returns the shares and
    the weight (microseconds) sampled inside a request.

    Example::

        >>> middleware_shares(Counter())
        ({}, 0)
    """
    owners: Counter[str] = Counter()
    inside = 0
    for stack, n in stacks.items():
        codes = [c for c in stack[1:]]
        start = next((i for i, c in enumerate(codes) if _is_request(c)), None)
        if start is None:
            continue
        inside += n
        owner = None
        for code in codes[start + 1 :]:
            if _is_terminal(code):
                owner = None
                break
            if _is_middleware(code):
                owner = getattr(code, "co_qualname", code.co_name).split(".")[0]
        if owner is not None:
            owners[owner] += n
    if not inside:
        return {}, 0
    return {k: v / inside for k, v in owners.most_common()}, inside


def file_share(stacks: Counter[tuple[Any, ...]], suffixes: tuple[str, ...]) -> float:
    """The share of samples with a frame from a file ending in one of ``suffixes`` (``/``-separated).

    Example::

        >>> file_share(Counter({("main", file_share.__code__): 3, ("main",): 1}), ("profiling/report.py",))
        0.75
    """
    total = hits = 0
    ends = tuple(s.replace("/", os.sep) for s in suffixes)
    for stack, n in stacks.items():
        total += n
        if any(c.co_filename.endswith(ends) for c in stack[1:]):
            hits += n
    return hits / total if total else 0.0


# ---------------------------------------------------------------------- rules
def small_writes(r: ProfilingReport) -> Optional[Suggestion]:
    """Many writes, each small and carrying about one frame: a system call per tiny frame."""
    io = r.io
    if io is None or io.writes < SMALL_WRITE_MIN:
        return None
    if io.bytes_per_write >= SMALL_WRITE_BYTES or io.frames_per_write >= 1.5:
        return None
    return Suggestion(
        rule="small_writes",
        finding=f"{io.writes:,} writes averaging {io.bytes_per_write:.0f} B and {io.frames_per_write:.2f} frames",
        advice=(
            "each write is a system call for one small frame: send more requests concurrently on a connection "
            "(fewer connections, more greenlets) so the writer coalesces them, or batch small messages"
        ),
    )


def decoder_copying(r: ProfilingReport) -> Optional[Suggestion]:
    """The frame decoder takes a large share of the CPU samples or of the allocated bytes."""
    alloc_total = sum(a.size for a in r.allocations)
    alloc_decoder = sum(a.size for a in r.allocations if "protocol/frames.py" in a.site)
    alloc_share = alloc_decoder / alloc_total if alloc_total else 0.0
    if r.decoder_share < DECODER_CPU_SHARE and alloc_share < DECODER_ALLOC_SHARE:
        return None
    return Suggestion(
        rule="decoder_copying",
        finding=(
            f"the frame decoder holds {r.decoder_share * 100:.0f}% of the samples and "
            f"{alloc_share * 100:.0f}% of the top allocation sites' bytes"
        ),
        advice=(
            "bodies are copied out of the read buffer: larger reads (recv_buffer_size) mean fewer, "
            "bigger copies; keep bodies of 16 KiB and more as they are (no re-slicing, no bytes() of views)"
        ),
    )


def compression_tiny(r: ProfilingReport) -> Optional[Suggestion]:
    """Compression spent on bodies too small to gain from it."""
    io = r.io
    if io is None or not io.frames_sent:
        return None
    body = max(0.0, io.bytes_sent / io.frames_sent - FRAME_HEADER)
    on_tiny = r.compression_min_size is not None and r.compression_min_size < TINY_MIN_SIZE and body < TINY_BODY
    busy = r.compression_share >= COMPRESSION_CPU_SHARE and body < 1024
    if not (on_tiny or busy):
        return None
    return Suggestion(
        rule="compression_tiny",
        finding=(
            f"bodies average {body:.0f} B while compression is on (min_size={r.compression_min_size}) "
            f"and holds {r.compression_share * 100:.0f}% of the samples"
        ),
        advice="compression of bodies this small costs CPU and saves next to nothing: raise min_size to 1024 or more",
    )


def pool_too_small(r: ProfilingReport) -> Optional[Suggestion]:
    """Callers wait for a connection: the pool is smaller than the concurrency."""
    pool = r.pool
    if pool is None:
        return None
    checkouts = pool.get("checkouts", 0)
    mean_wait = pool.get("checkout_wait_total", 0.0) / checkouts if checkouts else 0.0
    exhausted = pool.get("exhausted", 0)
    over = r.capacity is not None and r.concurrency is not None and r.concurrency > r.capacity
    if not (exhausted or mean_wait >= CHECKOUT_WAIT or over):
        return None
    return Suggestion(
        rule="pool_too_small",
        finding=(
            f"{exhausted} checkouts failed, checkouts waited {mean_wait * 1000:.1f} ms on average; "
            f"concurrency {r.concurrency} against a capacity of {r.capacity} "
            f"({pool.get('max_size')} connections)"
        ),
        advice="raise max_size (connections) or max_in_flight so the pool holds the concurrency, or limit the callers",
    )


def middleware_dominates(r: ProfilingReport) -> Optional[Suggestion]:
    """One middleware takes most of the time of a call."""
    if r.request_seconds < MIDDLEWARE_MIN_SECONDS or not r.middleware:
        return None
    name, share = max(r.middleware.items(), key=lambda kv: kv[1])
    if share < MIDDLEWARE_SHARE:
        return None
    return Suggestion(
        rule="middleware_dominates",
        finding=f"{name} holds {share * 100:.0f}% of the {r.request_seconds:.2f} s sampled inside Client.request",
        advice=f"look at {name}'s hot spots above: its own work costs more than the round trip",
    )


#: The rules a report applies, in order.
RULES: tuple[Callable[[ProfilingReport], Optional[Suggestion]], ...] = (
    small_writes,
    decoder_copying,
    compression_tiny,
    pool_too_small,
    middleware_dominates,
)
