"""ResilienceConfiguration and @resilient (layer L4): every policy, composed in one order.

:class:`ResilienceConfiguration` holds one config per policy (None turns that
policy off). :class:`Resilient` builds the policies from it and runs calls
through them in the recommended order, outermost first:

1. idempotency key (one per logical request) and the overall deadline
   (``timeout.overall``, 60 s)
2. fallback
3. circuit breaker (sees one outcome per logical request)
4. retry, with the retry budget (one retry scope per request)
5. failover across endpoints
6. hedging
7. bulkhead
8. timeout (the request timeout, innermost: every attempt gets
   ``min(request timeout, time left before the overall deadline)``)

Defaults: breaker, retry (3 attempts, idempotent calls only), budget and
timeouts on; bulkhead, fallback, failover and hedging off until configured.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> attempts = []
    >>> @resilient(idempotent=True, clock=FakeClock())
    ... def get_price():
    ...     attempts.append(1)
    ...     if len(attempts) == 1:
    ...         raise ConnectionResetError("reset")
    ...     return 42
    >>> get_price(), len(attempts)
    (42, 2)
"""

from __future__ import annotations

import contextvars
import functools
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, Union, overload

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import deadline_var
from ..decorating import check_options, config_fields, is_bare
from ..errors import ConfigurationError
from ..events import EventBus, default_bus
from .breaker import BreakerConfig, CircuitBreaker
from .budget import BudgetConfig, RetryBudget, options_into
from .bulkheads import Bulkhead, BulkheadConfig
from .composed import Runner, compose
from .failovers import Failover, FailoverConfig
from .fallbacks import Fallback, FallbackConfig, default_key
from .hedging import Hedge, HedgeConfig
from .idempotency import enter_logical_request, exit_logical_request
from .retrying import Retry, RetryConfig
from .timeouts import TimeoutConfig, TimeoutPolicy, timeout_from_config

__all__ = ["ResilienceConfiguration", "Resilient", "resilient"]

_DEADLINE = deadline_var()

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class ResilienceConfiguration:
    """One configuration for every policy (None turns a policy off).

    Example::

        >>> c = ResilienceConfiguration()
        >>> c.breaker is not None, c.retry.max_attempts, c.timeout.overall, c.bulkhead, c.hedge
        (True, 3, 60.0, None, None)
    """

    name: str = "default"
    breaker: Optional[BreakerConfig] = field(default_factory=BreakerConfig)
    retry: Optional[RetryConfig] = field(default_factory=RetryConfig)
    budget: Optional[BudgetConfig] = field(default_factory=BudgetConfig)
    timeout: Optional[TimeoutConfig] = field(default_factory=TimeoutConfig)
    bulkhead: Optional[BulkheadConfig] = None
    fallback: Optional[FallbackConfig] = None
    failover: Optional[FailoverConfig] = None
    hedge: Optional[HedgeConfig] = None
    idempotency_keys: bool = True


_POLICY_TYPES: dict[str, type] = {
    "breaker": BreakerConfig,
    "retry": RetryConfig,
    "budget": BudgetConfig,
    "timeout": TimeoutConfig,
    "bulkhead": BulkheadConfig,
    "fallback": FallbackConfig,
    "failover": FailoverConfig,
    "hedge": HedgeConfig,
}


def _check_policy_types(cfg: ResilienceConfiguration) -> None:
    # A value that is not the policy's config (fallback="n/a") would fail only
    # at the first call that needs it: refuse it at decoration, saying what to pass.
    for name, kind in _POLICY_TYPES.items():
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"resilient {name}= takes a {kind.__name__} or None, not {value!r}: write {name}={kind.__name__}(...)"
            )


class Resilient:
    """The policies of one :class:`ResilienceConfiguration`, composed; usable as a decorator.

    One instance shares its breaker, budget and bulkhead among every function
    it decorates.

    Example::

        >>> r = Resilient(ResilienceConfiguration(retry=None, name="inventory"))
        >>> @r
        ... def stock(item):
        ...     return 3
        >>> stock("apple"), r.breaker.name
        (3, 'inventory')
    """

    def __init__(
        self,
        config: Optional[ResilienceConfiguration] = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        bus: EventBus = default_bus,
        **overrides: Any,
    ) -> None:
        cfg: ResilienceConfiguration = options_into(
            config or ResilienceConfiguration(), overrides, "resilience", ("clock", "rng", "bus")
        )
        _check_policy_types(cfg)
        self.config = cfg
        self.clock = clock
        rng = rng or random.Random()
        self.budget: Optional[RetryBudget] = RetryBudget(cfg.budget, clock=clock) if cfg.budget is not None else None
        self.breaker: Optional[CircuitBreaker] = None
        if cfg.breaker is not None:
            bcfg = cfg.breaker if cfg.breaker.name != "default" else options_into(cfg.breaker, {"name": cfg.name}, "")
            self.breaker = CircuitBreaker(bcfg, clock=clock, rng=rng, bus=bus)
        self.retry: Optional[Retry] = None
        if cfg.retry is not None:
            self.retry = Retry(
                cfg.retry, clock=clock, rng=rng, budget=self.budget, use_budget=self.budget is not None, bus=bus
            )
        self.failover: Optional[Failover] = Failover(cfg.failover, clock=clock, bus=bus) if cfg.failover else None
        self.hedge: Optional[Hedge] = None
        if cfg.hedge is not None:
            self.hedge = Hedge(cfg.hedge, budget=self.budget, use_budget=self.budget is not None, clock=clock, bus=bus)
        self.bulkhead: Optional[Bulkhead] = None
        if cfg.bulkhead is not None:
            bh = cfg.bulkhead if cfg.bulkhead.name != "default" else options_into(cfg.bulkhead, {"name": cfg.name}, "")
            self.bulkhead = Bulkhead(config=bh, clock=clock, bus=bus)
        self.timeout: Optional[TimeoutPolicy] = timeout_from_config(cfg.timeout, clock=clock) if cfg.timeout else None
        self.fallback: Optional[Fallback] = Fallback(cfg.fallback, bus=bus) if cfg.fallback is not None else None
        self._overall = cfg.timeout.overall if cfg.timeout is not None else None
        #: The composed runner of this configuration (built once; see :mod:`.composed`), or None
        #: when fallback, failover, hedging, a bulkhead or an adaptive timeout need :meth:`run`.
        self.runner: Optional[Runner] = None
        #: The request timeout an attempt gets when the call names none (None: only the deadline).
        self.request_seconds: Optional[float] = self.timeout.seconds if self.timeout is not None else None
        if (
            self.fallback is None
            and self.failover is None
            and self.hedge is None
            and self.bulkhead is None
            and (self.timeout is None or self.timeout.adaptive is None)
        ):
            self.runner = compose(
                breaker=self.breaker,
                retry=self.retry,
                timeout=self.timeout,
                keys=cfg.idempotency_keys,
                overall=self._overall,
                clock=clock,
            )

    def run(
        self,
        call: Callable[[Optional[str]], T],
        *,
        idempotent: bool = False,
        key: Hashable = None,
        backup: Optional[Callable[[], T]] = None,
        adapt: Optional[Callable[[str, Any], T]] = None,
        timeout: Optional[float] = None,
    ) -> T:
        """Run ``call(endpoint)`` through every configured policy.

        ``endpoint`` is None unless failover is configured. ``key`` is the
        fallback cache key, ``backup`` the zero-argument backup call, ``adapt``
        converts fallback values, ``timeout`` overrides the request timeout.
        """

        def leaf(endpoint: Optional[str]) -> T:
            if self.timeout is None:
                return call(endpoint)
            return self.timeout.run(lambda: call(endpoint), seconds=timeout)

        def isolated(endpoint: Optional[str]) -> T:
            if self.bulkhead is None:
                return leaf(endpoint)
            return self.bulkhead.run(lambda: leaf(endpoint))

        def hedged(endpoint: Optional[str]) -> T:
            if self.hedge is None:
                return isolated(endpoint)
            return self.hedge.run(lambda: isolated(endpoint), idempotent=idempotent)

        def failed_over() -> T:
            if self.failover is None:
                return hedged(None)
            return self.failover.run(hedged, idempotent=idempotent)

        def retried() -> T:
            if self.retry is None:
                return failed_over()
            return self.retry.run(failed_over, idempotent=idempotent)

        def protected() -> T:
            if self.breaker is None:
                return retried()
            return self.breaker.call(retried)

        def guarded() -> T:
            if self.fallback is None:
                return protected()
            return self.fallback.run(protected, key=key, backup=backup, adapt=adapt)

        ktoken = enter_logical_request() if self.config.idempotency_keys else None
        dtoken = self._enter_overall()
        try:
            return guarded()
        finally:
            if dtoken is not None:
                _DEADLINE.reset(dtoken)
            exit_logical_request(ktoken)

    def _enter_overall(self) -> Optional[contextvars.Token[Optional[float]]]:
        # The overall deadline of one logical request (never later than an outer one).
        overall = self._overall
        if overall is None:
            return None
        mine = self.clock.now() + overall
        outer = _DEADLINE.get()
        return _DEADLINE.set(mine) if outer is None or mine < outer else None

    def _run_through(
        self, run: Runner, func: Callable[..., Any], idempotent: Union[bool, Callable[..., bool]]
    ) -> Callable[..., Any]:
        # The decorator's side of the composed runner: one frame that hands it the function and its arguments.
        seconds = self.request_seconds
        if callable(idempotent):
            predicate = idempotent

            @functools.wraps(func)
            def per_call(*args: Any, **kwargs: Any) -> Any:
                return run(func, seconds, predicate(*args, **kwargs), args, kwargs)

            return per_call
        fixed = bool(idempotent)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(func, seconds, fixed, args, kwargs)

        return wrapper

    def decorate(self, func: F, *, idempotent: Union[bool, Callable[..., bool]] = False) -> F:
        """Wrap ``func``; ``idempotent`` may be a predicate on the call's arguments."""
        fb = self.config.fallback
        if fb is not None and isinstance(fb.backup, str):
            raise ConfigurationError("a backup endpoint name only works in ResilienceMiddleware; give a callable")
        keyfn = (fb.key or default_key) if fb is not None else None
        backup = fb.backup if fb is not None else None
        endpoint_arg = "endpoint" if self.failover is not None else None
        if self.runner is not None:
            fast = self._run_through(self.runner, func, idempotent)
            fast.resilient = self  # type: ignore[attr-defined]
            return fast  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            def call(endpoint: Optional[str]) -> Any:
                if endpoint_arg is None:
                    return func(*args, **kwargs)
                return func(*args, **{endpoint_arg: endpoint}, **kwargs)

            return self.run(
                call,
                idempotent=idempotent(*args, **kwargs) if callable(idempotent) else idempotent,
                key=keyfn(*args, **kwargs) if keyfn is not None else None,
                backup=(lambda: backup(*args, **kwargs)) if callable(backup) else None,
            )

        wrapper.resilient = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def __call__(self, func: F) -> F:
        """``@Resilient(config)`` decorates a function (not idempotent; use :meth:`decorate` to say so)."""
        return self.decorate(func)

    def __repr__(self) -> str:
        on = [
            name
            for name in ("fallback", "breaker", "retry", "failover", "hedge", "bulkhead", "timeout")
            if getattr(self, name) is not None
        ]
        return f"<Resilient {self.config.name!r} policies={on}>"


@overload
def resilient(config: F, /) -> F: ...


@overload
def resilient(
    config: Optional[ResilienceConfiguration] = None,
    /,
    *,
    idempotent: Union[bool, Callable[..., bool]] = False,
    clock: Clock = SYSTEM_CLOCK,
    rng: Optional[random.Random] = None,
    bus: EventBus = default_bus,
    **overrides: Any,
) -> Callable[[F], F]: ...


def resilient(
    config: Any = None,
    /,
    *,
    idempotent: Union[bool, Callable[..., bool]] = False,
    clock: Clock = SYSTEM_CLOCK,
    rng: Optional[random.Random] = None,
    bus: EventBus = default_bus,
    **overrides: Any,
) -> Any:
    """Decorator: compose every configured policy around a function (see the module docstring).

    ``@resilient`` alone applies the defaults (breaker, retry of calls that
    were not sent, budget, timeouts). ``overrides`` replace fields of the
    configuration (``retry=RetryConfig(...)``, ``bulkhead=BulkheadConfig(...)``,
    ``breaker=None``...). Each decorated function gets its own policies,
    named after it unless ``name`` is given; share them by decorating with
    one :class:`Resilient` instead.

    Example::

        >>> from nexus_green.resilience.fallbacks import FallbackConfig
        >>> @resilient(fallback=FallbackConfig(default="n/a"), retry=None)
        ... def quote():
        ...     raise TimeoutError("slow upstream")
        >>> quote()
        'n/a'
    """
    if config is not None and not isinstance(config, ResilienceConfiguration):
        if is_bare(config, overrides):
            return resilient(idempotent=idempotent, clock=clock, rng=rng, bus=bus)(config)
        raise TypeError(
            f"resilient() takes a ResilienceConfiguration or keyword options, not {config!r}: "
            "write @resilient(retry=RetryConfig(max_attempts=3), ...)"
        )
    check_options("resilience", overrides, config_fields(ResilienceConfiguration))
    _check_policy_types(options_into(ResilienceConfiguration(), overrides, "resilience"))

    def decorate(func: F) -> F:
        opts = dict(overrides)
        if "name" not in opts and (config is None or config.name == "default"):
            opts["name"] = getattr(func, "__qualname__", "resilient")
        runner = Resilient(config, clock=clock, rng=rng, bus=bus, **opts)
        return runner.decorate(func, idempotent=idempotent)

    return decorate
