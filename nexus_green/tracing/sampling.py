"""Samplers: which traces are recorded (layer L4).

A sampler decides once per span from the parent's context (None for a
root) and the trace id. Four are provided:

* :class:`AlwaysOn` and :class:`AlwaysOff`;
* :class:`TraceIdRatio` ``(ratio)``: a root is sampled when the low 64 bits
  of its trace id fall below ``ratio * 2**64``, so every process that sees the
  same trace id with the same ratio decides alike;
* :class:`ParentBased` ``(root)``: a child follows its parent's sampled flag
  (local or from the wire); a root asks ``root``.

The default, :data:`DEFAULT_SAMPLER`, is ``ParentBased(TraceIdRatio(0.1))``:
one root in ten is sampled and the rest of its trace follows it.

Example::

    >>> from nexus_green.tracing.context import TraceContext
    >>> DEFAULT_SAMPLER
    ParentBased(TraceIdRatio(0.1))
    >>> DEFAULT_SAMPLER.should_sample(TraceContext(trace_id=5, span_id=1, flags=1), 5)
    True
    >>> TraceIdRatio(0.5).should_sample(None, (1 << 64) - 1)
    False
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from ..errors import ConfigurationError
from .context import TraceContext

__all__ = ["Sampler", "AlwaysOn", "AlwaysOff", "TraceIdRatio", "ParentBased", "DEFAULT_SAMPLER", "DEFAULT_RATIO"]

DEFAULT_RATIO = 0.1
_LOW64 = (1 << 64) - 1


@runtime_checkable
class Sampler(Protocol):
    """``should_sample(parent, trace_id) -> bool``; ``parent`` is None for a root."""

    def should_sample(self, parent: Optional[TraceContext], trace_id: int) -> bool: ...


class AlwaysOn:
    """Sample every span.

    Example::

        >>> AlwaysOn().should_sample(None, 1)
        True
    """

    def should_sample(self, parent: Optional[TraceContext], trace_id: int) -> bool:
        return True

    def __repr__(self) -> str:
        return "AlwaysOn()"


class AlwaysOff:
    """Sample nothing.

    Example::

        >>> AlwaysOff().should_sample(None, 1)
        False
    """

    def should_sample(self, parent: Optional[TraceContext], trace_id: int) -> bool:
        return False

    def __repr__(self) -> str:
        return "AlwaysOff()"


class TraceIdRatio:
    """Sample ``ratio`` (0.0-1.0) of traces, decided from the trace id's low 64 bits.

    Example::

        >>> TraceIdRatio(1.5)
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: sampling ratio must be between 0.0 and 1.0, got 1.5
    """

    __slots__ = ("ratio", "bound")

    def __init__(self, ratio: float) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ConfigurationError(f"sampling ratio must be between 0.0 and 1.0, got {ratio!r}")
        self.ratio = float(ratio)
        self.bound = round(self.ratio * (1 << 64))  # sampled when the low 64 bits of the trace id are below it

    def should_sample(self, parent: Optional[TraceContext], trace_id: int) -> bool:
        return (trace_id & _LOW64) < self.bound

    def __repr__(self) -> str:
        return f"TraceIdRatio({self.ratio})"


class ParentBased:
    """Follow the parent's sampled flag; ask ``root`` for a root.

    Example::

        >>> from nexus_green.tracing.context import TraceContext
        >>> ParentBased(AlwaysOn()).should_sample(TraceContext(trace_id=1, span_id=1, flags=0), 1)
        False
    """

    __slots__ = ("root",)

    def __init__(self, root: Sampler) -> None:
        if not isinstance(root, Sampler):
            raise ConfigurationError(f"ParentBased needs a sampler for roots, got {root!r}")
        self.root = root

    def should_sample(self, parent: Optional[TraceContext], trace_id: int) -> bool:
        if parent is not None:
            return parent.sampled
        return self.root.should_sample(None, trace_id)

    def __repr__(self) -> str:
        return f"ParentBased({self.root!r})"


DEFAULT_SAMPLER = ParentBased(TraceIdRatio(DEFAULT_RATIO))
"""Parent-based, with one root in ten sampled (ratio 0.1)."""
