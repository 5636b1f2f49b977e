"""Failover (layer L4): several endpoints of one service, with outlier ejection.

Modelled on Envoy's outlier detection. :class:`FailoverPolicy` (pure, on an
injected clock) orders the endpoints for each call (``ordered``: primary
first; ``round_robin``: rotating), counts consecutive failures per endpoint,
and ejects an endpoint after ``consecutive_failures`` (5) of them for
``base_ejection_time * ejections`` (30 s, 60 s, ... capped at 300 s). When its
time is up the endpoint is on probation: it is probed (with ``probe(endpoint)``
when given, else the next real call is the probe); success readmits it,
failure ejects it again for longer. The ejection multiplier decays by one per
``base_ejection_time`` spent healthy. At most ``max_ejection_percent`` (50%)
of the endpoints are ejected at once, and never all of them.

:class:`Failover` runs a call across the endpoints; errors that a retry may
help (see :func:`~nexus_green.resilience.retrying.is_retryable`) move on to
the next endpoint, other errors are raised at once. A non-idempotent call only
moves on when the error proves the request never left.

Events: ``failover.ejected`` [endpoint, until, ejections]; ``failover.readmitted``
[endpoint]; ``failover.switched`` [from_endpoint, error].

Example::

    >>> from nexus_green.clock import FakeClock
    >>> fo = Failover(endpoints=("a:1", "b:1"), clock=FakeClock())
    >>> def call(endpoint):
    ...     if endpoint == "a:1":
    ...         raise ConnectionRefusedError(endpoint)
    ...     return f"served by {endpoint}"
    >>> fo.run(call, idempotent=False)
    'served by b:1'
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import remaining
from ..decorating import bare_refused, check_options, config_fields
from ..errors import ConfigurationError, ConnectError
from ..events import EventBus, default_bus
from .budget import options_into
from .retrying import is_retryable, was_not_sent

__all__ = ["FailoverConfig", "EndpointHealth", "FailoverPolicy", "Failover", "failover"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverConfig:
    """Failover settings.

    Example::

        >>> c = FailoverConfig(endpoints=("a", "b"))
        >>> c.mode, c.consecutive_failures, c.base_ejection_time, c.max_ejection_time, c.max_ejection_percent
        ('ordered', 5, 30.0, 300.0, 50.0)
    """

    endpoints: tuple[str, ...] = ()
    mode: str = "ordered"
    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigurationError("failover needs at least one endpoint")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ConfigurationError(f"failover endpoints must be distinct: {self.endpoints}")
        if self.mode not in ("ordered", "round_robin"):
            raise ConfigurationError(f"failover mode must be 'ordered' or 'round_robin', got {self.mode!r}")
        if self.consecutive_failures < 1:
            raise ConfigurationError(f"consecutive_failures must be >= 1, got {self.consecutive_failures}")
        if not 0 < self.base_ejection_time <= self.max_ejection_time:
            raise ConfigurationError(
                f"ejection times must satisfy 0 < base ({self.base_ejection_time}) <= max ({self.max_ejection_time})"
            )
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigurationError(f"max_ejection_percent must be in [0, 100], got {self.max_ejection_percent}")


@dataclass(slots=True)
class EndpointHealth:
    """What the policy knows about one endpoint (mutable, owned by the policy)."""

    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: Optional[float] = None
    healthy_since: float = 0.0


class FailoverPolicy:
    """Pure endpoint ordering, ejection and readmission decisions.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> p = FailoverPolicy(FailoverConfig(endpoints=("a", "b", "c"), mode="round_robin"), clock=FakeClock())
        >>> p.candidates(), p.candidates()
        (['a', 'b', 'c'], ['b', 'c', 'a'])
    """

    def __init__(self, config: FailoverConfig, *, clock: Clock = SYSTEM_CLOCK, bus: EventBus = default_bus) -> None:
        self.config = config
        self._clock = clock
        self._bus = bus
        self._health: dict[str, EndpointHealth] = {
            ep: EndpointHealth(healthy_since=clock.now()) for ep in config.endpoints
        }
        self._rr = 0

    def health(self, endpoint: str) -> EndpointHealth:
        """The health record of ``endpoint``."""
        return self._health[endpoint]

    def is_ejected(self, endpoint: str) -> bool:
        """True while ``endpoint`` sits out an ejection."""
        until = self._health[endpoint].ejected_until
        return until is not None and self._clock.now() < until

    def on_probation(self, endpoint: str) -> bool:
        """True when ``endpoint``'s ejection is over but it has not yet proven healthy."""
        until = self._health[endpoint].ejected_until
        return until is not None and self._clock.now() >= until

    def ejected(self) -> list[str]:
        """Endpoints ejected now."""
        return [ep for ep in self.config.endpoints if self.is_ejected(ep)]

    def candidates(self) -> list[str]:
        """Endpoints to try for one call, in order (ejected ones left out)."""
        eps = list(self.config.endpoints)
        if self.config.mode == "round_robin":
            start = self._rr % len(eps)
            self._rr += 1
            eps = eps[start:] + eps[:start]
        usable = [ep for ep in eps if not self.is_ejected(ep)]
        return usable or eps

    def _may_eject(self) -> bool:
        n = len(self.config.endpoints)
        ejected = len(self.ejected())
        if ejected + 1 >= n:
            return False
        return ejected == 0 or (ejected + 1) * 100.0 / n <= self.config.max_ejection_percent

    def record_success(self, endpoint: str) -> None:
        """A call (or probe) to ``endpoint`` succeeded."""
        h = self._health[endpoint]
        h.consecutive_failures = 0
        if h.ejected_until is not None:
            h.ejected_until = None
            h.healthy_since = self._clock.now()
            self._bus.emit("failover.readmitted", endpoint=endpoint)

    def record_failure(self, endpoint: str) -> bool:
        """A call (or probe) to ``endpoint`` failed; return True if that ejected it."""
        h = self._health[endpoint]
        h.consecutive_failures += 1
        probation = self.on_probation(endpoint)
        if not probation and h.consecutive_failures < self.config.consecutive_failures:
            return False
        if not self._may_eject():
            return False
        now = self._clock.now()
        if not probation:
            healthy_for = now - h.healthy_since
            h.ejections = max(0, h.ejections - int(healthy_for // self.config.base_ejection_time))
        h.ejections += 1
        duration = min(self.config.max_ejection_time, self.config.base_ejection_time * h.ejections)
        h.ejected_until = now + duration
        h.consecutive_failures = 0
        self._bus.emit("failover.ejected", endpoint=endpoint, until=h.ejected_until, ejections=h.ejections)
        return True

    def __repr__(self) -> str:
        return f"<FailoverPolicy endpoints={len(self.config.endpoints)} ejected={self.ejected()}>"


class Failover:
    """Runs ``fn(endpoint)`` on the candidates in turn until one succeeds.

    Example::

        >>> Failover(endpoints=("only",)).run(lambda ep: ep.upper(), idempotent=True)
        'ONLY'
    """

    def __init__(
        self,
        config: Optional[FailoverConfig] = None,
        *,
        probe: Optional[Callable[[str], bool]] = None,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus = default_bus,
        **options: Any,
    ) -> None:
        if "endpoints" in options:
            options["endpoints"] = tuple(options["endpoints"])
        if config is None:
            if "endpoints" not in options:
                raise ConfigurationError("failover needs endpoints=(...)")
            config = FailoverConfig(endpoints=options.pop("endpoints"))
        self.config: FailoverConfig = options_into(config, options, "failover", ("probe", "clock", "bus"))
        self.policy = FailoverPolicy(self.config, clock=clock, bus=bus)
        self.probe = probe
        self._clock = clock
        self._bus = bus

    def _probe_ok(self, endpoint: str) -> bool:
        assert self.probe is not None
        try:
            ok = bool(self.probe(endpoint))
        except Exception:
            ok = False
        if ok:
            self.policy.record_success(endpoint)
        else:
            self.policy.record_failure(endpoint)
        return ok

    def run(self, fn: Callable[[str], T], *, idempotent: bool) -> T:
        """Call ``fn(endpoint)`` on each candidate until one succeeds; raise the last error."""
        last: Optional[Exception] = None
        for endpoint in self.policy.candidates():
            if last is not None:
                left = remaining(clock=self._clock)
                if left is not None and left <= 0:
                    break
            if self.probe is not None and self.policy.on_probation(endpoint) and not self._probe_ok(endpoint):
                continue
            try:
                result = fn(endpoint)
            except Exception as exc:
                if not is_retryable(exc) or not (idempotent or was_not_sent(exc)):
                    raise
                self.policy.record_failure(endpoint)
                self._bus.emit("failover.switched", from_endpoint=endpoint, error=exc)
                last = exc
                continue
            self.policy.record_success(endpoint)
            return result
        if last is None:
            raise ConnectError(f"failover: no endpoint of {list(self.config.endpoints)} passed its probe")
        raise last

    def __repr__(self) -> str:
        return f"<Failover {self.policy!r}>"


_FAILOVER_USAGE = '@failover(["primary", "replica"]) on a function that takes endpoint='


def failover(
    endpoints: Optional[Sequence[str]] = None,
    /,
    *,
    endpoint_arg: str = "endpoint",
    idempotent: Any = False,
    **options: Any,
) -> Callable[[F], F]:
    """Decorator: call the function with ``endpoint=<each endpoint>`` until one succeeds.

    It needs the endpoints: ``@failover`` alone or without endpoints is a
    TypeError at decoration. ``idempotent`` may be a bool or a predicate on
    the call's arguments.

    Example::

        >>> @failover(["primary", "replica"], idempotent=True)
        ... def read(key, *, endpoint):
        ...     if endpoint == "primary":
        ...         raise TimeoutError("slow primary")
        ...     return f"{key}@{endpoint}"
        >>> read("k")
        'k@replica'
    """
    if endpoints is None:
        endpoints = options.pop("endpoints", None)
    if callable(endpoints):
        raise bare_refused("failover", _FAILOVER_USAGE)
    if endpoints is None or isinstance(endpoints, (str, bytes)) or not endpoints:
        raise TypeError(f"failover() needs the endpoints, a list of names: write {_FAILOVER_USAGE}")
    check_options("failover", options, (*config_fields(FailoverConfig), "probe", "clock", "bus"))
    runner = Failover(endpoints=tuple(endpoints), **options)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            idem = idempotent(*args, **kwargs) if callable(idempotent) else bool(idempotent)
            return runner.run(lambda ep: func(*args, **{endpoint_arg: ep}, **kwargs), idempotent=idem)

        wrapper.failover = runner  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
