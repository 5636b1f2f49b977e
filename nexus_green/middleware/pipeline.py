"""The request pipeline: the Middleware protocol, ordering, conditions and composition (layer L4).

A middleware is any object with a ``name`` and
``__call__(request, call_next) -> Response``. A :class:`Pipeline` sorts its
middlewares by their ``order`` attribute (lower runs first, i.e. outermost)
and :meth:`Pipeline.wrap` turns them and a terminal handler (the Client's
"send it on the wire") into one ``Handler``.

Default order, outermost first (:data:`DEFAULT_ORDER`):

=====================  =====  ============================================
middleware             order  why there
=====================  =====  ============================================
resilience / fallback  100    sees every failure below it, retries the lot
custom (no ``order``)  150    e.g. auth headers: before the cache key
cache                  200    a hit skips limits, backpressure and the wire
rate limit             300    only requests that really go out spend tokens
backpressure           400    counts what is really in flight
compression            500    innermost: the body that goes on the wire
=====================  =====  ============================================

The chain is built once, at :meth:`Pipeline.wrap` time, out of closures; with
no middlewares ``wrap`` returns the terminal handler itself, so an empty
pipeline costs nothing per request.

Example::

    >>> from nexus_green.protocol.messages import Request, Response
    >>> class Tag:
    ...     def __init__(self, name, order):
    ...         self.name, self.order = name, order
    ...     def __call__(self, request, call_next):
    ...         r = call_next(request)
    ...         return r.replace(body=self.name.encode() + b"(" + r.body + b")")
    >>> p = Pipeline([Tag("inner", 500), Tag("outer", 100)])
    >>> [m.name for m in p.middlewares]
    ['outer', 'inner']
    >>> p.wrap(lambda req: Response(body=req.body))(Request(body=b"x")).body
    b'outer(inner(x))'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FunctionType
from typing import Any, Optional, Protocol, Union, runtime_checkable

from ..errors import ConfigurationError
from ..protocol.messages import Request, Response

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
    "ORDER_CUSTOM",
    "ORDER_CACHE",
    "ORDER_RATE_LIMIT",
    "ORDER_BACKPRESSURE",
    "ORDER_COMPRESSION",
    "order_of",
    "request_matcher",
]

Handler = Callable[[Request], Response]
"""What a middleware calls to go on: ``call_next(request) -> Response``."""

ORDER_RESILIENCE = 100
ORDER_CUSTOM = 150
ORDER_CACHE = 200
ORDER_RATE_LIMIT = 300
ORDER_BACKPRESSURE = 400
ORDER_COMPRESSION = 500

DEFAULT_ORDER: Mapping[str, int] = {
    "resilience": ORDER_RESILIENCE,
    "custom": ORDER_CUSTOM,
    "cache": ORDER_CACHE,
    "rate_limit": ORDER_RATE_LIMIT,
    "backpressure": ORDER_BACKPRESSURE,
    "compression": ORDER_COMPRESSION,
}
"""The documented default order, outermost (lowest) first."""


@runtime_checkable
class Middleware(Protocol):
    """A step of the request path.

    It may change the request, answer without calling ``call_next`` (a cache
    hit), refuse (raise a :class:`~nexus_green.errors.PolicyRejection`), or
    look at the response. An optional integer ``order`` attribute places it in
    a :class:`Pipeline` (see :data:`DEFAULT_ORDER`).

    Example::

        >>> class Echo:
        ...     name = "echo"
        ...     def __call__(self, request, call_next):
        ...         return call_next(request)
        >>> isinstance(Echo(), Middleware)
        True
    """

    name: str

    def __call__(self, request: Request, call_next: Handler) -> Response: ...


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


Predicate = Callable[[Request], bool]
FidsOrPredicate = Union[int, Iterable[int], Predicate]


def request_matcher(selector: FidsOrPredicate) -> Predicate:
    """Turn a Fid, a collection of Fids or a predicate into a ``Request -> bool`` test.

    Example::

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

    def __call__(self, request: Request, call_next: Handler) -> Response:
        if self.predicate(request):
            return self.middleware(request, call_next)
        return call_next(request)

    def __repr__(self) -> str:
        return f"<Conditional {self.middleware.name} order={self.order}>"


def when(selector: FidsOrPredicate, middleware: Middleware) -> Conditional:
    """Run ``middleware`` only for the Fid(s) or the predicate ``selector`` selects.

    Example::

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

    def handler(request: Request) -> Response:
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

    def __call__(self, request: Request, call_next: Handler) -> Response:
        built = self._built
        if built[0] is not call_next:
            # One read, one write, no yield in between: safe between greenlets.
            built = (call_next, _chain(self.middlewares, call_next))
            self._built = built
        return built[1](request)

    def __repr__(self) -> str:
        return f"<Composite {self.name} order={self.order}>"


def _unbound(request: Request) -> Response:  # pragma: no cover - replaced before any call
    raise ConfigurationError("composite middleware called without call_next")


def compose(*middlewares: Middleware, name: str = "", order: Optional[int] = None) -> Composite:
    """Combine middlewares into one (first is outermost). See :class:`Composite`.

    Example::

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

    def __call__(self, request: Request, call_next: Handler) -> Response:
        return call_next(request)


class Pipeline:
    """Ordered middlewares around a terminal handler.

    ``sort=True`` (the default) orders by ``order`` (stable: equal orders keep
    the order given); ``sort=False`` keeps exactly the order given.

    Example::

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
