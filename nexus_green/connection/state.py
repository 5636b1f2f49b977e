"""The connection lifecycle as one transition table (modelled on h11's ``_state.py``).

Every state change of a :class:`~nexus_green.connection.Connection` goes
through :meth:`Lifecycle.fire`; nothing else assigns a state. Listeners see
every transition as ``(old, event, new)``.

::

    idle --connect--> connecting --connected--> connected
    connecting --failed--> reconnecting | closed      (closed when reconnect is off)
    connected  --lost-->   reconnecting | closed
    reconnecting --retry--> connecting
    reconnecting --give_up--> closed
    any open state --close--> closing --closed--> closed

Example::

    >>> lc = Lifecycle()
    >>> lc.fire("connect"); lc.fire("connected"); lc.state
    'connected'
    >>> lc.fire("retry")
    Traceback (most recent call last):
    ...
    nexus_green.errors.LocalProtocolError: connection lifecycle: no transition for event 'retry' in state 'connected'
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import LocalProtocolError

__all__ = [
    "IDLE",
    "CONNECTING",
    "CONNECTED",
    "RECONNECTING",
    "CLOSING",
    "CLOSED",
    "STATES",
    "TRANSITIONS",
    "Lifecycle",
]

IDLE = "idle"
CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
CLOSING = "closing"
CLOSED = "closed"
STATES = (IDLE, CONNECTING, CONNECTED, RECONNECTING, CLOSING, CLOSED)

# (state, event) -> new state. "failed"/"lost" go to RECONNECTING; the
# connection fires "give_up" right after when reconnection is off.
TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, "connect"): CONNECTING,
    (IDLE, "close"): CLOSING,
    (CONNECTING, "connected"): CONNECTED,
    (CONNECTING, "failed"): RECONNECTING,
    (CONNECTING, "close"): CLOSING,
    (CONNECTED, "lost"): RECONNECTING,
    (CONNECTED, "close"): CLOSING,
    (RECONNECTING, "retry"): CONNECTING,
    (RECONNECTING, "give_up"): CLOSED,
    (RECONNECTING, "close"): CLOSING,
    (CLOSING, "closed"): CLOSED,
}

Transition = Callable[[str, str, str], None]


class Lifecycle:
    """Holds the current state and applies :data:`TRANSITIONS`.

    Example::

        >>> seen = []
        >>> lc = Lifecycle(listeners=[lambda old, ev, new: seen.append((old, new))])
        >>> lc.fire("close"); lc.fire("closed"); seen
        [('idle', 'closing'), ('closing', 'closed')]
    """

    __slots__ = ("state", "_listeners", "history")

    def __init__(self, listeners: list[Transition] | None = None) -> None:
        self.state = IDLE
        self._listeners: list[Transition] = list(listeners or [])
        self.history: list[tuple[str, str, str]] = []

    def can(self, event: str) -> bool:
        """Whether ``event`` is allowed in the current state."""
        return (self.state, event) in TRANSITIONS

    def fire(self, event: str) -> None:
        """Apply ``event``; an event the table does not allow is a LocalProtocolError."""
        old = self.state
        new = TRANSITIONS.get((old, event))
        if new is None:
            raise LocalProtocolError(f"connection lifecycle: no transition for event {event!r} in state {old!r}")
        self.state = new
        if len(self.history) >= 64:
            del self.history[:32]
        self.history.append((old, event, new))
        for fn in list(self._listeners):
            fn(old, event, new)

    def add_listener(self, fn: Transition) -> None:
        """Call ``fn(old, event, new)`` on every later transition."""
        self._listeners.append(fn)
