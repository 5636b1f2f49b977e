"""Request and Response: what a Client call carries through the middleware pipeline.

Pure data (layer L1). A :class:`Request` is what the caller asked for; a
:class:`Response` is the decoded answer, with the body already decompressed.

Example::

    >>> r = Response(body=b"pong", code=200, fid=1, qid=9)
    >>> r.ok, r.text()
    (True, 'pong')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Optional

__all__ = ["Request", "Response", "make_response"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One logical request.

    ``timeout`` is this call's own limit in seconds (None: the client default);
    ``idempotent`` says whether a retry may send it again; ``context`` is a
    free-form dict middlewares may use to pass facts down (for example the
    compression codec chosen) and is never sent.

    Example::

        >>> Request(body=b"x", fid=2).with_headers({"a": "1"}).headers
        {'a': '1'}
    """

    body: bytes = b""
    fid: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: Optional[float] = None
    idempotent: bool = False
    endpoint: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def with_headers(self, extra: Mapping[str, str]) -> Request:
        """A copy with ``extra`` merged over the existing headers."""
        merged = dict(self.headers)
        merged.update(extra)
        return replace(self, headers=merged)

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed (dataclasses.replace)."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The answer to a request (or a frame the server pushed on its own).

    ``latency`` is seconds from send to receive as measured by the connection
    (0.0 when not measured, for example for cached responses; ``cached`` says
    which level served it, if any). ``tp`` is the raw Tp byte of the frame
    (the Client decodes any compressed body before middlewares see it).

    A Response pickles and copies (the disk cache stores it, a
    :class:`~nexus_green.errors.RemoteError` carries it) whatever its
    ``headers`` mapping: headers read from the wire are a read-only
    ``mappingproxy``, which pickle refuses, so they travel as a plain dict
    and come back read-only.

    Example::

        >>> import pickle
        >>> r = Response(body=b"x", headers=MappingProxyType({"etag": "1"}))
        >>> back = pickle.loads(pickle.dumps(r))
        >>> back == r, type(back.headers).__name__
        (True, 'mappingproxy')
    """

    body: bytes = b""
    code: int = 200
    fid: int = 0
    qid: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    latency: float = 0.0
    conn_id: str = ""
    cached: str = ""
    tp: int = 0

    @property
    def ok(self) -> bool:
        """True when ``code`` is 200."""
        return self.code == 200

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text."""
        return self.body.decode(encoding)

    def replace(self, **changes: Any) -> Response:
        """A copy with some fields changed (dataclasses.replace)."""
        return replace(self, **changes)

    def __reduce__(self) -> tuple[Any, ...]:
        # Not on the request path: only pickle and copy call it. The headers go as a
        # plain dict (a mappingproxy does not pickle) with a flag to restore read-only.
        headers = self.headers
        return _rebuild_response, (
            type(self),
            self.body,
            self.code,
            self.fid,
            self.qid,
            dict(headers),
            isinstance(headers, MappingProxyType),
            self.latency,
            self.conn_id,
            self.cached,
            self.tp,
        )


_new = object.__new__
_RESPONSE_SETTERS = tuple(
    Response.__dict__[n].__set__
    for n in (
        "body",
        "code",
        "fid",
        "qid",
        "headers",
        "latency",
        "conn_id",
        "cached",
        "tp",
    )
)


def make_response(
    body: bytes,
    code: int,
    fid: int,
    qid: int,
    headers: Mapping[str, str],
    latency: float,
    conn_id: str,
    tp: int,
) -> Response:
    """Build a :class:`Response` without the frozen-dataclass ``__init__`` (the per-request hot path).

    Example::

        >>> make_response(b"x", 200, 1, 2, {}, 0.5, "c", 0) == Response(body=b"x", fid=1, qid=2, latency=0.5, conn_id="c")
        True
    """
    r = _new(Response)
    sb, sc, sf, sq, sh, sl, si, sca, st = _RESPONSE_SETTERS
    sb(r, body)
    sc(r, code)
    sf(r, fid)
    sq(r, qid)
    sh(r, headers)
    sl(r, latency)
    si(r, conn_id)
    sca(r, "")
    st(r, tp)
    return r


def _rebuild_response(
    cls: type[Response],
    body: bytes,
    code: int,
    fid: int,
    qid: int,
    headers: dict[str, str],
    read_only: bool,
    latency: float,
    conn_id: str,
    cached: str,
    tp: int,
) -> Response:
    """Unpickle a :class:`Response` (see ``Response.__reduce__``)."""
    r = _new(cls)
    values = (
        body,
        code,
        fid,
        qid,
        MappingProxyType(headers) if read_only else headers,
        latency,
        conn_id,
        cached,
        tp,
    )
    for setter, value in zip(_RESPONSE_SETTERS, values, strict=True):
        setter(r, value)
    return r
