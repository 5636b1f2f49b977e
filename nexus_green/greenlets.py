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
import os
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


def _reinit_hub_after_fork() -> None:
    """In the child of a plain ``os.fork()``: make gevent's hub, threadpool and resolver usable again.

    ``gevent.os.fork`` (and a monkey-patched ``os.fork``) does this itself; a
    plain fork in an unpatched application does not, and the child's first DNS
    lookup then hangs 10 s on the parent's resolver threads (GEVENT_NOTES).
    ``gevent.reinit`` is idempotent, so running it twice after a patched fork
    is harmless. This is not monkey-patching: nothing of the application's
    changes, only gevent's own state in the child is reset.
    """
    gevent.reinit()


os.register_at_fork(after_in_child=_reinit_hub_after_fork)


def live_greenlets() -> list[gevent.Greenlet]:
    """Greenlets started by :func:`spawn` that have not finished yet."""
    return [g for g in list(_LIVE) if not g.dead]
