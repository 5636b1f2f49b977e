"""The event bus (layer L0): how lower layers report what happened.

The transport and the connection never import monitoring or tracing; they
emit named events here, and whoever cares subscribes. An emit with no
subscriber for that name costs one dict lookup, so the per-request path can
afford it; emitters on the hot path may also guard with :meth:`EventBus.wants`
to skip building the attributes at all.

A subscriber that raises is logged and counted, never propagated: a broken
metrics sink must not break a request.

Event names (the catalogue later layers rely on; attributes in brackets):

* ``connect.started`` [conn_id, endpoint]; ``connect.complete`` [conn_id,
  endpoint, duration, phases]; ``connect.failed`` [conn_id, endpoint,
  duration, error]
* ``connect.dns.*``, ``connect.tcp.*``, ``connect.tls.*``, ``connect.socks5.*``
  with ``started`` / ``complete`` / ``failed`` [conn_id, duration, error]
* ``connection.state`` [conn_id, endpoint, old, new]; ``connection.closed``
  [conn_id, endpoint, age, requests, error]
* ``request.complete`` [conn_id, qid, fid, latency, bytes_out, bytes_in, code];
  ``request.failed`` [conn_id, qid, fid, latency, error];
  ``request.late`` [conn_id, qid];
  ``request.traced`` [conn_id, qid, fid, queued, written, latency, bytes_out, bytes_in, code]: only for
  a request whose headers carry a ``traceparent`` (tracing sends one for sampled requests), so a
  tracer gets a message's phases without an event per request; ``queued`` and ``written`` are clock
  times (the frame queued; the write that took it, or its first part, to the kernel)
* ``io.stats`` [conn_id, interval, bytes_sent, frames_sent, bytes_received,
  frames_received, completed, non_ok, latencies, sampled_every]: what a connection did since
  its previous ``io.stats`` (emitted on ``Connection.flush_stats()``, which
  monitoring calls at each tick, on close, and every 4,096 latencies); ``latencies`` lists the
  send-to-arrival time of the requests in every ``sampled_every``-th batch
  (the bus's ``latency_sample_every`` hint, set by a sampling monitor). Monitoring subscribes to this,
  not to the per-request events: those cost too much on the hot path, so
  ``request.complete`` / ``io.sent`` / ``io.received`` are emitted only when
  someone subscribes to them.
* ``io.sent`` [conn_id, nbytes, frames]; ``io.received`` [conn_id, nbytes, frames]
* ``push.received`` [conn_id, fid, qid]; ``protocol.error`` [conn_id, error, offset]
* ``heartbeat.sent`` [conn_id]; ``heartbeat.rtt`` [conn_id, rtt, written] (``written``: the clock
  time the write that took the ping to the kernel ran, or None);
  ``heartbeat.timeout`` [conn_id]
* ``reconnect.scheduled`` [conn_id, attempt, delay]; ``reconnect.succeeded``
  [conn_id, attempt]; ``reconnect.failed`` [conn_id, attempt, error];
  ``reconnect.gave_up`` [conn_id, attempt]
* ``pool.checkout`` [pool, wait]; ``pool.exhausted`` [pool, wait];
  ``pool.connection.opened`` / ``pool.connection.discarded`` [pool, conn_id, reason];
  ``pool.state`` [pool, size, max_size, in_use, idle, waiters, utilisation, in_flight]
  (emitted by the monitor from ``ConnectionPool.stats()`` on each tick)
* ``buffers.state`` [in_use, capacity]
* ``shared.fallback`` [link, reason, error]: a Redis call of a shared policy fell back to the local
  behaviour (reason down, error, timeout, refused, no_budget or busy; emitted only when someone
  subscribes); ``shared.down`` [link, error, retry_in]: an outage began or a probe failed;
  ``shared.resumed`` [link, down_for, fallbacks]: it ended (``nexus_green.transport.redis``,
  docs/shared-state.md)

Resilience (``nexus_green.resilience``, on the bus given to each policy):

* ``breaker.state`` [breaker, old, new, reason, open_for, openings]: a state
  change; reason is consecutive_failures, failure_rate, slow_call_rate,
  reset_timeout, trial_passed, trial_failed, forced, set or storage
* ``breaker.call`` [breaker, state, outcome, duration, slow, calls, failures,
  slow_calls, failure_rate, slow_rate]: one recorded call (outcome success,
  failure, ignored or discarded) with the sliding-window figures; emitted only
  when someone subscribes to it
* ``breaker.rejected`` [breaker, state, retry_after]
* ``retry.attempt`` [attempt, delay, error, reason]: before each retry;
  ``retry.gave_up`` [attempts, reason, error]: a wanted retry was refused
  (reason attempts or budget)
* ``bulkhead.rejected`` [bulkhead, reason, active, waiting]; reason
  queue_full or wait_timeout
* ``fallback.used`` [fallback, level, error]; level cache, default or backup
* ``failover.switched`` [from_endpoint, error]; ``failover.ejected``
  [endpoint, until, ejections]; ``failover.readmitted`` [endpoint]
* ``hedge.sent`` [attempt, delay]; ``hedge.won`` [attempt, hedged]

Example::

    >>> bus = EventBus()
    >>> seen = []
    >>> unsubscribe = bus.subscribe(seen.append, prefix="request.")
    >>> bus.emit("request.complete", qid=1, latency=0.002)
    >>> bus.emit("io.sent", nbytes=24)          # not under the prefix
    >>> [(e.name, e.attrs["qid"]) for e in seen]
    [('request.complete', 1)]
    >>> unsubscribe()
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventBus", "Listener", "default_bus"]

log = logging.getLogger("nexus_green.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened: a dotted ``name``, monotonic ``time`` and ``attrs``."""

    name: str
    time: float
    attrs: Mapping[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]

# emit() builds events through the slot descriptors: about 3x cheaper than the
# frozen dataclass __init__, and emit runs once per I/O batch on the hot path.
_new_event = object.__new__
_set_name = Event.__dict__["name"].__set__
_set_time = Event.__dict__["time"].__set__
_set_attrs = Event.__dict__["attrs"].__set__
_monotonic = time.monotonic
_versions = itertools.count(1)  # EventBus.version, unique across buses


class EventBus:
    """Synchronous publish/subscribe by dotted-name prefix.

    Example::

        >>> bus = EventBus()
        >>> bus.wants("request.complete")
        False
        >>> off = bus.subscribe(lambda e: None, prefix="request.")
        >>> bus.wants("request.complete"), bus.wants("io.sent")
        (True, False)
    """

    def __init__(self) -> None:
        self._subs: list[tuple[str, Listener]] = []
        self._cache: dict[str, tuple[Listener, ...]] = {}
        self.listener_errors = 0
        # Changes on every (un)subscribe so hot-path emitters can cache wants().
        # Drawn from one process-wide counter, so two buses never share a
        # version: an emitter that is handed another bus notices it too.
        self.version = next(_versions)
        # Hint for emitters of io.stats: include the latencies of every k-th
        # batch of responses only (a monitor's sample rate of 1/k). Counts stay exact.
        self.latency_sample_every = 1

    def subscribe(self, listener: Listener, *, prefix: str = "") -> Callable[[], None]:
        """Call ``listener(event)`` for every event whose name starts with ``prefix``.

        Returns a function that unsubscribes (idempotent).
        """
        entry = (prefix, listener)
        self._subs.append(entry)
        self._cache.clear()
        self.version = next(_versions)

        def unsubscribe() -> None:
            # By identity: the same listener and prefix may be subscribed twice, and a
            # second call of this function must not remove the other subscription.
            for i, e in enumerate(self._subs):
                if e is entry:
                    del self._subs[i]
                    break
            else:
                return
            self._cache.clear()
            self.version = next(_versions)

        return unsubscribe

    def _listeners(self, name: str) -> tuple[Listener, ...]:
        found = self._cache.get(name)
        if found is None:
            found = tuple(fn for prefix, fn in self._subs if name.startswith(prefix))
            self._cache[name] = found
        return found

    def wants(self, name: str) -> bool:
        """True when at least one subscriber would receive ``name``."""
        return bool(self._listeners(name))

    def listeners(self, name: str) -> tuple[Listener, ...]:
        """The listeners that would receive ``name``, in delivery order.

        Emitters that keep state for their listeners compare it to tell a
        change of audience from a change elsewhere on the bus. Example::

            >>> bus = EventBus()
            >>> def show(e): pass
            >>> _ = bus.subscribe(show, prefix="io.")
            >>> bus.listeners("io.stats") == (show,), bus.listeners("pool.state")
            (True, ())
        """
        return self._listeners(name)

    def emit(self, name: str, /, **attrs: Any) -> None:
        """Deliver an event to its subscribers, now, in the caller's greenlet."""
        listeners = self._listeners(name)
        if not listeners:
            return
        event = _new_event(Event)
        _set_name(event, name)
        _set_time(event, _monotonic())
        _set_attrs(event, attrs)
        for fn in listeners:
            try:
                fn(event)
            except Exception:
                self.listener_errors += 1
                log.exception("event listener %r failed on %s", fn, name)

    def __repr__(self) -> str:
        return f"<EventBus subscribers={len(self._subs)} listener_errors={self.listener_errors}>"


default_bus = EventBus()
