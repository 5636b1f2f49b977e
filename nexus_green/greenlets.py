"""The library's own spawn helper (layer L0).

``gevent.spawn`` does not copy contextvars into the child, so a deadline or a
trace context set by the caller would vanish in a background greenlet. Every
greenlet nexus_green starts goes through :func:`spawn`, which runs the target
inside a copy of the caller's context, names it, and keeps it in a weak set so
tests can prove nothing leaked (:func:`live_greenlets`).

Example::

    >>> g = spawn(lambda: 42, name="answer")
    >>> g.get(timeout=1)
    42
    >>> g in live_greenlets()
    False
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["spawn", "live_greenlets"]

_LIVE: weakref.WeakSet[gevent.Greenlet] = weakref.WeakSet()


def spawn(fn: Callable[..., Any], *args: Any, name: str = "", **kwargs: Any) -> gevent.Greenlet:
    """Start ``fn(*args, **kwargs)`` in a new greenlet that sees the caller's contextvars."""
    ctx = contextvars.copy_context()
    g = gevent.Greenlet(ctx.run, fn, *args, **kwargs)
    if name:
        g.name = f"nexus_green:{name}"
    _LIVE.add(g)
    g.start()
    return g


def live_greenlets() -> list[gevent.Greenlet]:
    """Greenlets started by :func:`spawn` that have not finished yet."""
    return [g for g in list(_LIVE) if not g.dead]
