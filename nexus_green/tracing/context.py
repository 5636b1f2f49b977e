"""Trace context: ids, the W3C ``traceparent`` form and the frame header form (layer L4).

A :class:`TraceContext` names one span of one trace: a 16-byte trace id, an
8-byte span id, the parent's span id (0 for a root) and the W3C trace flags
(bit 0: sampled). Ids are kept as ints (cheap to draw and compare) and are
never all-zero. On the wire (the frame header block, docs/protocol.md) the
context travels in two forms at once:

* ``trace-id`` (32 hex digits), ``span-id`` (16 hex: the sender's span, which
  the receiver's span takes as its parent) and ``parent-span-id`` (the
  sender's own parent, only when it has one);
* ``traceparent``, the W3C Trace Context value ``00-<trace>-<span>-<flags>``.
  Its flags are parsed as a byte and read by bit, so ``03`` (sampled plus a
  future flag) is sampled and ``02`` is not.

Example::

    >>> ctx = TraceContext(trace_id=0xABC, span_id=0x12, flags=FLAG_SAMPLED)
    >>> ctx.traceparent
    '00-00000000000000000000000000000abc-0000000000000012-01'
    >>> parse_traceparent("00-00000000000000000000000000000abc-0000000000000012-03").sampled
    True
    >>> extract(inject(ctx))
    TraceContext(trace_id=2748, span_id=18, parent_span_id=0, flags=1, remote=True)
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigurationError

__all__ = [
    "FLAG_SAMPLED",
    "HEADER_TRACE_ID",
    "HEADER_SPAN_ID",
    "HEADER_PARENT_SPAN_ID",
    "HEADER_TRACEPARENT",
    "TraceContext",
    "make_context",
    "new_trace_id",
    "new_span_id",
    "parse_traceparent",
    "inject",
    "extract",
]

FLAG_SAMPLED = 0x01
HEADER_TRACE_ID = "trace-id"
HEADER_SPAN_ID = "span-id"
HEADER_PARENT_SPAN_ID = "parent-span-id"
HEADER_TRACEPARENT = "traceparent"

# A private Random seeded from os.urandom: about 10x cheaper than SystemRandom per id. Reseeded in a
# forked child, which would otherwise draw the same ids as its parent.
_random = random.Random()
_rand = _random.getrandbits
os.register_at_fork(after_in_child=_random.seed)
_HEX = "0123456789abcdef"


def new_trace_id() -> int:
    """A random 128-bit trace id, never 0.

    Example::

        >>> 0 < new_trace_id() < 1 << 128
        True
    """
    while True:
        v = _rand(128)
        if v:
            return v


def new_span_id() -> int:
    """A random 64-bit span id, never 0.

    Example::

        >>> 0 < new_span_id() < 1 << 64
        True
    """
    while True:
        v = _rand(64)
        if v:
            return v


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: ``trace_id`` (128 bits), ``span_id`` (64), ``parent_span_id`` (0: root), ``flags``.

    ``remote`` is True for a context read from the wire (its span lives in
    another process). Zero ids are refused.

    Example::

        >>> TraceContext(trace_id=1, span_id=2).sampled
        False
        >>> TraceContext(trace_id=0, span_id=2)
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: trace id must be a non-zero 128-bit int, got 0
    """

    trace_id: int
    span_id: int
    parent_span_id: int = 0
    flags: int = 0
    remote: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.trace_id < 1 << 128:
            raise ConfigurationError(f"trace id must be a non-zero 128-bit int, got {self.trace_id!r}")
        if not 0 < self.span_id < 1 << 64:
            raise ConfigurationError(f"span id must be a non-zero 64-bit int, got {self.span_id!r}")
        if not 0 <= self.parent_span_id < 1 << 64:
            raise ConfigurationError(f"parent span id must be a 64-bit int, got {self.parent_span_id!r}")

    @property
    def sampled(self) -> bool:
        """Bit 0 of the flags."""
        return bool(self.flags & FLAG_SAMPLED)

    @property
    def trace_id_hex(self) -> str:
        """32 lowercase hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """16 lowercase hex digits."""
        return f"{self.span_id:016x}"

    @property
    def parent_span_id_hex(self) -> str:
        """16 hex digits, or ``""`` for a root."""
        return f"{self.parent_span_id:016x}" if self.parent_span_id else ""

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` value (version 00)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags & 0xFF:02x}"


_CTX_SETTERS = tuple(
    TraceContext.__dict__[n].__set__ for n in ("trace_id", "span_id", "parent_span_id", "flags", "remote")
)
_new = object.__new__


def make_context(trace_id: int, span_id: int, parent_span_id: int, flags: int) -> TraceContext:
    """A local :class:`TraceContext` from ids known to be valid (drawn here), without the checks.

    The frozen dataclass ``__init__`` and its checks cost about 2 us; a
    sampled request makes several contexts.

    Example::

        >>> make_context(1, 2, 0, 1) == TraceContext(trace_id=1, span_id=2, flags=1)
        True
    """
    ctx = _new(TraceContext)
    st, ss, sp, sf, sr = _CTX_SETTERS
    st(ctx, trace_id)
    ss(ctx, span_id)
    sp(ctx, parent_span_id)
    sf(ctx, flags)
    sr(ctx, False)
    return ctx


def _hex_int(text: str, digits: int, what: str) -> int:
    if len(text) != digits or any(c not in _HEX for c in text):
        raise ValueError(f"{what} must be {digits} lowercase hex digits, got {text!r}")
    value = int(text, 16)
    if not value:
        raise ValueError(f"{what} is all zeros")
    return value


def parse_traceparent(value: str) -> TraceContext:
    """Parse a W3C ``traceparent``; a malformed value raises ValueError naming the fault.

    A version above 00 may carry more fields after the flags (they are
    ignored, as the W3C spec asks); version ``ff`` is invalid.

    Example::

        >>> parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").sampled
        False
        >>> parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01")
        Traceback (most recent call last):
        ...
        ValueError: traceparent trace id is all zeros
    """
    parts = value.strip().split("-")
    if len(parts) < 4:
        raise ValueError(f"traceparent needs 4 dash-separated fields, got {value!r}")
    version, trace, span, flags = parts[:4]
    if len(version) != 2 or any(c not in _HEX for c in version) or version == "ff":
        raise ValueError(f"traceparent version {version!r} is invalid")
    if version == "00" and len(parts) != 4:
        raise ValueError(f"traceparent version 00 has exactly 4 fields, got {value!r}")
    trace_id = _hex_int(trace, 32, "traceparent trace id")
    span_id = _hex_int(span, 16, "traceparent span id")
    if len(flags) != 2 or any(c not in _HEX for c in flags):
        raise ValueError(f"traceparent flags must be 2 hex digits, got {flags!r}")
    return TraceContext(trace_id=trace_id, span_id=span_id, flags=int(flags, 16), remote=True)


def inject(ctx: TraceContext) -> dict[str, str]:
    """The header entries that carry ``ctx`` (both forms).

    Example::

        >>> sorted(inject(TraceContext(trace_id=1, span_id=2, parent_span_id=3, flags=1)))
        ['parent-span-id', 'span-id', 'trace-id', 'traceparent']
    """
    headers = {
        HEADER_TRACE_ID: f"{ctx.trace_id:032x}",
        HEADER_SPAN_ID: f"{ctx.span_id:016x}",
        HEADER_TRACEPARENT: f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.flags & 0xFF:02x}",
    }
    if ctx.parent_span_id:
        headers[HEADER_PARENT_SPAN_ID] = f"{ctx.parent_span_id:016x}"
    return headers


def extract(headers: Mapping[str, str]) -> Optional[TraceContext]:
    """The remote context in ``headers``, or None when there is none or it is malformed.

    ``traceparent`` wins (it carries the flags); without it, ``trace-id`` and
    ``span-id`` give a sampled context (a sender that sends them samples).
    ``parent_span_id`` of the result is the sender's own parent, when sent.

    Example::

        >>> extract({"trace-id": "00000000000000000000000000000001", "span-id": "0000000000000002"}).sampled
        True
        >>> extract({"traceparent": "garbage"}) is None
        True
    """
    tp = headers.get(HEADER_TRACEPARENT)
    parent = headers.get(HEADER_PARENT_SPAN_ID)
    try:
        parent_id = _hex_int(parent, 16, "parent-span-id") if parent else 0
        if tp is not None:
            ctx = parse_traceparent(tp)
            if parent_id:
                ctx = TraceContext(ctx.trace_id, ctx.span_id, parent_id, ctx.flags, True)
            return ctx
        trace, span = headers.get(HEADER_TRACE_ID), headers.get(HEADER_SPAN_ID)
        if trace is None or span is None:
            return None
        return TraceContext(
            trace_id=_hex_int(trace, 32, "trace-id"),
            span_id=_hex_int(span, 16, "span-id"),
            parent_span_id=parent_id,
            flags=FLAG_SAMPLED,
            remote=True,
        )
    except ValueError:
        return None
