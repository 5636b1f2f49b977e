"""The request pipeline contract (layer L0): Handler, the Middleware protocol, the orders, Pipeline.

Both ``middleware/`` and ``resilience/`` implement this contract, so it lives
below both of them (layer L0, docs/design.md) and imports only the stdlib and
:mod:`nexus_green.errors`. It is typed on plain objects, not on
:class:`~nexus_green.protocol.messages.Request`: anything a middleware knows
about requests it learns from its own layer.

A middleware is any object with a ``name`` and
``__call__(request, call_next) -> Response``. A :class:`Pipeline` sorts its
middlewares by their ``order`` attribute (lower runs first, i.e. outermost)
and :meth:`Pipeline.wrap` turns them and a terminal handler (the Client's
"send it on the wire") into one ``Handler``.

Default order, outermost first (:data:`DEFAULT_ORDER`; every built-in carries
its ``order``):

==========================  =====  =============================================
middleware                  order  why there
==========================  =====  =============================================
resilience (all policies)   100    sees every failure below it, retries the lot
idempotency                 100    one key per logical request, kept by retries
fallback                    110    answers when everything below it failed
circuit breaker             120    one outcome per logical request
retry                       130    every attempt runs all that is below it
failover                    134    each attempt picks an endpoint
hedge                       138    a hedge is one more attempt
bulkhead                    142    holds a slot per attempt
timeout                     146    the per-attempt timeout
auth / custom (no order)    150    inside the retries: every attempt is signed;
                                   before the cache builds its key
cache                       200    a hit skips limits, backpressure and the wire
rate limit                  300    only requests that really go out spend tokens
backpressure                400    counts what is really in flight
compression                 500    innermost: the body that goes on the wire
==========================  =====  =============================================

The chain is built once, at :meth:`Pipeline.wrap` time, out of closures; with
no middlewares ``wrap`` returns the terminal handler itself, so an empty
pipeline costs nothing per request.

Buses: an object emits on the :class:`~nexus_green.events.EventBus` it was
constructed with (``bus=``, default :data:`~nexus_green.events.default_bus`);
nothing rebinds a bus later. :func:`bus_of` reads the bus a middleware
reports, and a Client refuses a middleware whose bus is not its own.

Example::

    >>> from nexus_green.protocol.messages import Request, Response
    >>> class Tag:
    ...     def __init__(self, name, order):
    ...         self.name, self.order = name, order
    ...     def __call__(self, request, call_next):
    ...         r = call_next(request)
    ...         return r.replace(body=self.name.encode() + b"(" + r.body + b")")
    >>> p = Pipeline([Tag("inner", ORDER_COMPRESSION), Tag("outer", ORDER_RETRY), Tag("auth", ORDER_AUTH)])
    >>> [m.name for m in p.middlewares]
    ['outer', 'auth', 'inner']
    >>> p.wrap(lambda req: Response(body=req.body))(Request(body=b"x")).body
    b'outer(auth(inner(x)))'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FunctionType
from typing import Any, Optional, Protocol, Union, runtime_checkable

from .errors import ConfigurationError

__all__ = [
    "Handler",
    "Middleware",
    "Pipeline",
    "Conditional",
    "Composite",
    "when",
    "compose",
    "DEFAULT_ORDER",
    "ORDER_RESILIENCE",
    "ORDER_IDEMPOTENCY",
    "ORDER_FALLBACK",
    "ORDER_CIRCUIT_BREAKER",
    "ORDER_RETRY",
    "ORDER_FAILOVER",
    "ORDER_HEDGE",
    "ORDER_BULKHEAD",
    "ORDER_TIMEOUT",
    "ORDER_AUTH",
    "ORDER_CUSTOM",
    "ORDER_CACHE",
    "ORDER_RATE_LIMIT",
    "ORDER_BACKPRESSURE",
    "ORDER_COMPRESSION",
    "bus_of",
    "order_of",
    "request_matcher",
    "FidsOrPredicate",
    "Predicate",
]

Handler = Callable[[Any], Any]
"""What a middleware calls to go on: ``call_next(request) -> response``."""

# Resilience first: a policy can only act on the failures of what runs inside it, so the
# retries must wrap everything that should be repeated per attempt (auth, cache, limits, wire).
# Within 100-149 the single-policy middlewares keep the order of resilience.config.Resilient.
ORDER_RESILIENCE = 100
ORDER_IDEMPOTENCY = 100
ORDER_FALLBACK = 110
ORDER_CIRCUIT_BREAKER = 120
ORDER_RETRY = 130
ORDER_FAILOVER = 134
ORDER_HEDGE = 138
ORDER_BULKHEAD = 142
ORDER_TIMEOUT = 146
# Auth is where a middleware without an order lands: inside every retry (each attempt is
# signed afresh, so a refreshed token is used) and before the cache builds its key.
ORDER_AUTH = 150
ORDER_CUSTOM = 150
ORDER_CACHE = 200
ORDER_RATE_LIMIT = 300
ORDER_BACKPRESSURE = 400
ORDER_COMPRESSION = 500

DEFAULT_ORDER: Mapping[str, int] = {
    "resilience": ORDER_RESILIENCE,
    "idempotency": ORDER_IDEMPOTENCY,
    "fallback": ORDER_FALLBACK,
    "circuit_breaker": ORDER_CIRCUIT_BREAKER,
    "retry": ORDER_RETRY,
    "failover": ORDER_FAILOVER,
    "hedge": ORDER_HEDGE,
    "bulkhead": ORDER_BULKHEAD,
    "timeout": ORDER_TIMEOUT,
    "auth": ORDER_AUTH,
    "custom": ORDER_CUSTOM,
    "cache": ORDER_CACHE,
    "rate_limit": ORDER_RATE_LIMIT,
    "backpressure": ORDER_BACKPRESSURE,
    "compression": ORDER_COMPRESSION,
}
"""The documented default order, outermost (lowest) first, by the built-ins' default names."""


def bus_of(middleware: Any) -> Any:
    """The event bus a middleware says it emits on (its ``bus`` attribute), or None.

    A middleware emits on the bus it was constructed with; a Client uses this
    to refuse one whose bus is not the Client's.

    Example::

        >>> bus_of(object()) is None
        True
    """
    return getattr(middleware, "bus", None)


@runtime_checkable
class Middleware(Protocol):
    """A step of the request path.

    It may change the request, answer without calling ``call_next`` (a cache
    hit), refuse (raise a :class:`~nexus_green.errors.PolicyRejection`), or
    look at the response. An optional integer ``order`` attribute places it in
    a :class:`Pipeline` (see :data:`DEFAULT_ORDER`).

    An optional ``needed()`` method lets a Client skip the pipeline for a call
    the middleware would pass through untouched (tracing's unsampled roots):
    when it is a Client's only middleware, the Client calls ``needed()`` in
    the caller's greenlet before it builds the Request; False sends the call
    the short way, True commits the middleware to this call (its ``__call__``
    follows in the same greenlet, with no yield in between).

    Example::

        >>> class Echo:
        ...     name = "echo"
        ...     def __call__(self, request, call_next):
        ...         return call_next(request)
        >>> isinstance(Echo(), Middleware)
        True
    """

    name: str

    def __call__(self, request: Any, call_next: Handler) -> Any: ...


def order_of(middleware: Any) -> int:
    """The middleware's ``order`` attribute, or :data:`ORDER_CUSTOM` when it has none.

    Example::

        >>> order_of(object())
        150
    """
    order = getattr(middleware, "order", ORDER_CUSTOM)
    if not isinstance(order, int) or isinstance(order, bool):
        raise ConfigurationError(f"middleware {getattr(middleware, 'name', middleware)!r} has non-int order {order!r}")
    return order


Predicate = Callable[[Any], bool]
FidsOrPredicate = Union[int, Iterable[int], Predicate]


def request_matcher(selector: FidsOrPredicate) -> Predicate:
    """Turn a Fid, a collection of Fids or a predicate into a ``request -> bool`` test.

    Example::

        >>> from nexus_green.protocol.messages import Request, Response
        >>> m = request_matcher({1, 2})
        >>> m(Request(fid=2)), m(Request(fid=3))
        (True, False)
        >>> request_matcher(lambda r: r.endpoint == "a")(Request(endpoint="a"))
        True
    """
    if callable(selector):
        return selector
    if isinstance(selector, bool):
        raise ConfigurationError(f"expected a Fid, Fids or a predicate, got {selector!r}")
    if isinstance(selector, int):
        fid = selector
        return lambda request: request.fid == fid
    try:
        fids = frozenset(selector)
    except TypeError:
        raise ConfigurationError(f"expected a Fid, Fids or a predicate, got {selector!r}") from None
    for f in fids:
        if not isinstance(f, int) or isinstance(f, bool):
            raise ConfigurationError(f"Fids must be ints, got {f!r}")
    return lambda request: request.fid in fids


class Conditional:
    """A middleware that runs only for requests a predicate selects (see :func:`when`).

    Other requests go straight to ``call_next``. It keeps the wrapped
    middleware's ``order``.

    Example::

        >>> c = Conditional(lambda r: r.fid == 1, Pipeline.identity("inner"))
        >>> c.name, c.order
        ('when(inner)', 150)
    """

    __slots__ = ("name", "order", "middleware", "predicate")

    def __init__(self, predicate: FidsOrPredicate, middleware: Middleware) -> None:
        self.predicate = request_matcher(predicate)
        self.middleware = middleware
        self.name = f"when({middleware.name})"
        self.order = order_of(middleware)

    def __call__(self, request: Any, call_next: Handler) -> Any:
        if self.predicate(request):
            return self.middleware(request, call_next)
        return call_next(request)

    def __repr__(self) -> str:
        return f"<Conditional {self.middleware.name} order={self.order}>"


def when(selector: FidsOrPredicate, middleware: Middleware) -> Conditional:
    """Run ``middleware`` only for the Fid(s) or the predicate ``selector`` selects.

    Example::

        >>> from nexus_green.protocol.messages import Request, Response
        >>> seen = []
        >>> class Spy:
        ...     name = "spy"
        ...     def __call__(self, request, call_next):
        ...         seen.append(request.fid)
        ...         return call_next(request)
        >>> h = Pipeline([when({7}, Spy())]).wrap(lambda r: Response())
        >>> _ = h(Request(fid=7)); _ = h(Request(fid=8))
        >>> seen
        [7]
    """
    return Conditional(selector, middleware)


def _bind(middleware: Middleware, call_next: Handler) -> Handler:
    # Call the bound ``__call__`` (or the function itself), not the instance: CPython 3.11+ runs a
    # Python-to-Python call in the same C frame, while calling an instance goes through
    # ``tp_call`` and nests a C frame per middleware. Every greenlet switch copies the C stack,
    # so a deep one makes each switch of every request dearer.
    call = middleware if isinstance(middleware, FunctionType) else middleware.__call__

    def handler(request: Any) -> Any:
        return call(request, call_next)

    return handler


def _chain(middlewares: Sequence[Middleware], terminal: Handler) -> Handler:
    handler = terminal
    for mw in reversed(middlewares):
        handler = _bind(mw, handler)
    return handler


class Composite:
    """Several middlewares acting as one, in the given order (first is outermost).

    Its ``order`` is the lowest of its members' unless given. The inner chain
    is built once per distinct ``call_next`` and reused, so a composite inside
    a wrapped pipeline builds it once.

    Example::

        >>> c = compose(Pipeline.identity("a"), Pipeline.identity("b"), name="ab")
        >>> c.name, [m.name for m in c.middlewares]
        ('ab', ['a', 'b'])
    """

    __slots__ = ("name", "order", "middlewares", "_built")

    def __init__(self, middlewares: Sequence[Middleware], *, name: str = "", order: Optional[int] = None) -> None:
        if not middlewares:
            raise ConfigurationError("compose() needs at least one middleware")
        self.middlewares: tuple[Middleware, ...] = tuple(middlewares)
        self.name = name or "+".join(m.name for m in self.middlewares)
        self.order = min(order_of(m) for m in self.middlewares) if order is None else order
        self._built: tuple[Optional[Handler], Handler] = (None, _chain(self.middlewares, _unbound))

    def __call__(self, request: Any, call_next: Handler) -> Any:
        built = self._built
        if built[0] is not call_next:
            # One read, one write, no yield in between: safe between greenlets.
            built = (call_next, _chain(self.middlewares, call_next))
            self._built = built
        return built[1](request)

    def __repr__(self) -> str:
        return f"<Composite {self.name} order={self.order}>"


def _unbound(request: Any) -> Any:  # pragma: no cover - replaced before any call
    raise ConfigurationError("composite middleware called without call_next")


def compose(*middlewares: Middleware, name: str = "", order: Optional[int] = None) -> Composite:
    """Combine middlewares into one (first is outermost). See :class:`Composite`.

    Example::

        >>> from nexus_green.protocol.messages import Request, Response
        >>> h = Pipeline([compose(Pipeline.identity("a"))]).wrap(lambda r: Response(body=b"ok"))
        >>> h(Request()).body
        b'ok'
    """
    return Composite(middlewares, name=name, order=order)


class _Identity:
    __slots__ = ("name", "order")

    def __init__(self, name: str, order: int) -> None:
        self.name = name
        self.order = order

    def __call__(self, request: Any, call_next: Handler) -> Any:
        return call_next(request)


class Pipeline:
    """Ordered middlewares around a terminal handler.

    ``sort=True`` (the default) orders by ``order`` (stable: equal orders keep
    the order given); ``sort=False`` keeps exactly the order given.

    Example::

        >>> from nexus_green.protocol.messages import Request, Response
        >>> p = Pipeline()
        >>> terminal = lambda r: Response(body=r.body)
        >>> p.wrap(terminal) is terminal          # no middleware: zero overhead
        True
    """

    __slots__ = ("_middlewares", "sort")

    def __init__(self, middlewares: Iterable[Middleware] = (), *, sort: bool = True) -> None:
        self.sort = sort
        self._middlewares: tuple[Middleware, ...] = ()
        for mw in middlewares:
            self.add(mw)

    @staticmethod
    def identity(name: str = "identity", order: int = ORDER_CUSTOM) -> Middleware:
        """A middleware that only calls ``call_next`` (for tests and placeholders).

        Example::

            >>> Pipeline.identity("x").name
            'x'
        """
        return _Identity(name, order)

    @property
    def middlewares(self) -> tuple[Middleware, ...]:
        """The middlewares in the order they run (outermost first)."""
        return self._middlewares

    def add(self, middleware: Middleware) -> Pipeline:
        """Add a middleware (placed by its order); returns the pipeline for chaining.

        Handlers already returned by :meth:`wrap` are not changed.

        Example::

            >>> len(Pipeline().add(Pipeline.identity()).middlewares)
            1
        """
        if not callable(middleware) or not isinstance(getattr(middleware, "name", None), str):
            raise ConfigurationError(f"{middleware!r} is not a middleware: it needs a str name and __call__")
        order_of(middleware)  # validate now, not at wrap time
        mws = self._middlewares + (middleware,)
        self._middlewares = tuple(sorted(mws, key=order_of)) if self.sort else mws
        return self

    def wrap(self, terminal: Handler) -> Handler:
        """One handler that runs every middleware, then ``terminal``.

        Example::

            >>> from nexus_green.protocol.messages import Request, Response
            >>> Pipeline([Pipeline.identity()]).wrap(lambda r: Response(code=201))(Request()).code
            201
        """
        if not self._middlewares:
            return terminal
        return _chain(self._middlewares, terminal)

    def __len__(self) -> int:
        return len(self._middlewares)

    def __repr__(self) -> str:
        return "<Pipeline " + " > ".join(f"{m.name}({order_of(m)})" for m in self._middlewares) + ">"
