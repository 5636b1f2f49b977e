"""The NexusError hierarchy (layer L0).

Errors are grouped by what the caller should do about them:

* :class:`NexusTimeout` -- something took too long (connect, request, deadline).
* :class:`NetworkError` -- the network or the peer failed (refused, reset, DNS,
  TLS, proxy). Usually worth retrying on another connection; TLS failures
  (an untrusted server, a server that rejects the client certificate:
  :class:`ClientCertificateRejected`) are not.
* :class:`ProtocolError` -- bytes that break the NexusKit framing. Split into
  :class:`LocalProtocolError` (we were asked to send something invalid) and
  :class:`RemoteProtocolError` (the peer sent garbage).
* :class:`RemoteError` -- the peer answered with a non-200 code.
* :class:`PolicyRejection` -- a local policy refused the call before it ran
  (circuit open, rate limited, bulkhead full, retry budget spent, pool
  exhausted, overloaded).
* :class:`UsageError` -- the caller used the API wrongly (bad URL, bad option,
  call after close). "You closed it" (:class:`ClientClosed`,
  :class:`ConnectionClosed`) is a usage error; "it broke"
  (:class:`ConnectionLost`) is a network error.

Every error knows whether a retry may help (:attr:`NexusError.retryable`),
and library code always chains the cause with ``raise ... from``.

Example::

    >>> from nexus_green.errors import ConnectionRefused, NetworkError
    >>> err = ConnectionRefused("connection refused by 127.0.0.1:1")
    >>> isinstance(err, NetworkError), err.retryable
    (True, True)
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "NexusError",
    "NexusTimeout",
    "ConnectTimeout",
    "RequestTimeout",
    "DeadlineExceeded",
    "HandshakeTimeout",
    "NetworkError",
    "ConnectError",
    "DNSError",
    "ConnectionRefused",
    "ConnectionLost",
    "HeartbeatTimeout",
    "TLSError",
    "CertificateUntrusted",
    "CertificateExpired",
    "HostnameMismatch",
    "PinMismatch",
    "ClientCertificateRejected",
    "ProxyError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "FrameTooLarge",
    "CompressionError",
    "RemoteError",
    "PolicyRejection",
    "CircuitOpen",
    "RateLimited",
    "BulkheadFull",
    "RetryBudgetExhausted",
    "PoolExhausted",
    "Overloaded",
    "IdempotencyInProgress",
    "UsageError",
    "InvalidURL",
    "ConfigurationError",
    "MetricError",
    "ClientClosed",
    "ConnectionClosed",
]


class NexusError(Exception):
    """Base of every error nexus_green raises.

    ``retryable`` tells a retry policy whether another attempt may succeed;
    subclasses set a class default and single instances may override it.

    Example::

        >>> try:
        ...     raise RequestTimeout("request qid=7 timed out after 1.0s")
        ... except NexusError as e:
        ...     print(type(e).__name__, e.retryable)
        RequestTimeout True
    """

    retryable: bool = False

    def __init__(self, message: str = "", *, retryable: Optional[bool] = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (multiprocessing, process pools) without calling __init__ again:
        # subclasses take keyword-only arguments (RemoteError's ``code`` is
        # required) that Exception's default reduction would not pass.
        return _rebuild_error, (type(self), self.args, self.__dict__)


def restate(err: NexusError, message: str) -> NexusError:
    """A fresh error of ``err``'s class and attributes with a new message, chained from ``err``.

    For telling several callers about one failure: each gets its own
    instance (one exception object raised in many greenlets would share a
    traceback), whatever keyword arguments its class's ``__init__`` wants.

    Example::

        >>> e = restate(RemoteError("503", code=503), "fid=1: the attempt you waited on failed")
        >>> type(e).__name__, e.code, str(e), e.__cause__ is not None
        ('RemoteError', 503, 'fid=1: the attempt you waited on failed', True)
    """
    new = err.__class__.__new__(err.__class__)
    Exception.__init__(new, message)
    new.__dict__.update(err.__dict__)
    new.__cause__ = err
    return new


def _rebuild_error(cls: type[NexusError], args: tuple[Any, ...], state: dict[str, Any]) -> NexusError:
    """Unpickle a NexusError: its message arguments and attributes, as they were."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


# --- timeouts -----------------------------------------------------------------
class NexusTimeout(NexusError):
    """Something took longer than it was allowed to.

    ``phase`` names where the time went: ``dns``, ``tcp``, ``socks5``,
    ``tls`` (the phases of a connect), ``connect`` (waiting for a connect
    attempt that had not started a phase yet, or backing off between
    attempts), ``checkout`` (waiting for room in the pool), ``write``
    (the request was queued, not yet handed to the kernel), ``response``
    (it was sent; no answer came), or ``call`` (a guarded call of any kind).

    Example::

        >>> e = ConnectTimeout("connect to x timed out", phase="tls")
        >>> e.phase, e.retryable
        ('tls', True)
    """

    retryable = True
    phase: str = ""

    def __init__(self, message: str = "", *, phase: Optional[str] = None, retryable: Optional[bool] = None) -> None:
        super().__init__(message, retryable=retryable)
        if phase is not None:
            self.phase = phase


class ConnectTimeout(NexusTimeout):
    """Opening the connection (DNS, TCP, TLS, SOCKS5) exceeded ``connect_timeout``."""


class RequestTimeout(NexusTimeout):
    """No response arrived within the request's timeout.

    Only the request's own Qid is abandoned; the connection stays usable.
    """


class DeadlineExceeded(NexusTimeout):
    """An overall deadline set by :func:`nexus_green.deadlines.deadline` ran out.

    Not retryable: by definition no time is left for another attempt.
    """

    retryable = False


class HandshakeTimeout(ConnectTimeout):
    """A TLS or SOCKS5 handshake did not finish in time."""


# --- network ------------------------------------------------------------------
class NetworkError(NexusError):
    """The network or the peer failed."""

    retryable = True


class ConnectError(NetworkError):
    """The connection could not be established."""


class DNSError(ConnectError):
    """The host name did not resolve."""


class ConnectionRefused(ConnectError):
    """The peer refused the TCP connection."""


class ConnectionLost(NetworkError):
    """An established connection broke (reset, EOF, mid-frame close).

    Requests that were in flight on it fail with this error; whether they are
    retried is the retry policy's decision, because the server may have
    applied them.
    """


class HeartbeatTimeout(ConnectionLost):
    """The peer did not answer a heartbeat within ``heartbeat_timeout``."""


class TLSError(ConnectError):
    """The TLS handshake failed. ``reason`` names what failed."""

    retryable = False
    reason: str = "handshake_failed"

    def __init__(self, message: str = "", *, reason: Optional[str] = None, retryable: Optional[bool] = None) -> None:
        super().__init__(message, retryable=retryable)
        if reason is not None:
            self.reason = reason


class CertificateUntrusted(TLSError):
    """The peer's certificate chain does not lead to a trusted CA."""

    reason = "untrusted_issuer"


class CertificateExpired(TLSError):
    """The peer's certificate is expired or not yet valid."""

    reason = "expired"


class HostnameMismatch(TLSError):
    """The peer's certificate does not name the host we connected to."""

    reason = "hostname_mismatch"


class PinMismatch(TLSError):
    """The peer's certificate or public key does not match any configured pin."""

    reason = "pin_mismatch"


class ClientCertificateRejected(TLSError):
    """The TLS server refused this client: its certificate is missing, not trusted, or not allowed in.

    ``reason`` names the alert the server sent (RFC 8446 section 6.2):
    ``certificate_required``, ``bad_certificate``, ``unknown_ca``,
    ``certificate_expired``, ``certificate_revoked``,
    ``unsupported_certificate``, ``certificate_unknown``, ``access_denied``,
    or ``handshake_failure`` (how TLS 1.2 servers refuse a missing or
    unacceptable client certificate). Not retryable: the same client
    configuration gets the same answer; fix the certificate or the server's
    trust and access settings.

    With TLS 1.3 the server judges the client certificate after the client
    has finished its handshake, so this error may come from the first read
    on an established link rather than from the connect; requests in flight
    then fail with it, never with :class:`ConnectionLost`. A TLS stack
    refuses the certificate before it hands any application data to the
    server's application, so no request on such a link was processed.

    One class, not one per alert: whatever the alert, the caller's move is
    the same (stop, report, fix the configuration), and ``reason`` tells an
    operator which fix.

    Example::

        >>> e = ClientCertificateRejected("rejected", reason="unknown_ca")
        >>> isinstance(e, TLSError), e.reason, e.retryable
        (True, 'unknown_ca', False)
    """

    reason = "certificate_required"


class ProxyError(ConnectError):
    """A SOCKS5 proxy refused or failed the tunnel. ``reason`` names the reply."""

    reason: str = "general_failure"

    def __init__(self, message: str = "", *, reason: Optional[str] = None, retryable: Optional[bool] = None) -> None:
        super().__init__(message, retryable=retryable)
        if reason is not None:
            self.reason = reason


# --- protocol -----------------------------------------------------------------
class ProtocolError(NexusError):
    """Bytes that do not follow the NexusKit framing.

    ``offset`` is the stream byte offset where the problem was found, when known.
    """

    def __init__(self, message: str = "", *, offset: Optional[int] = None, retryable: Optional[bool] = None) -> None:
        super().__init__(message, retryable=retryable)
        self.offset = offset


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the framing; the connection is closed."""


class FrameTooLarge(RemoteProtocolError):
    """A frame announced a length above ``max_frame_size``."""


class CompressionError(RemoteProtocolError):
    """A compressed body could not be decoded, or names an unknown codec."""


# --- remote status ----------------------------------------------------------------
class RemoteError(NexusError):
    """The peer answered with a status code other than 200.

    Example::

        >>> e = RemoteError("fid=3 answered code 503", code=503)
        >>> e.code
        503
    """

    def __init__(
        self,
        message: str = "",
        *,
        code: int,
        response: object = None,
        retryable: Optional[bool] = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code
        self.response = response


# --- policy rejections ------------------------------------------------------------
class PolicyRejection(NexusError):
    """A local policy refused the call before it reached the network."""


class CircuitOpen(PolicyRejection):
    """The circuit breaker is open (or half-open and full of trial calls)."""


class RateLimited(PolicyRejection):
    """A rate limiter refused the call. ``retry_after`` is seconds to the next slot."""

    def __init__(self, message: str = "", *, retry_after: float = 0.0, retryable: Optional[bool] = None) -> None:
        super().__init__(message, retryable=retryable)
        self.retry_after = retry_after


class BulkheadFull(PolicyRejection):
    """A bulkhead's slots and wait queue are full, or the wait timed out."""


class RetryBudgetExhausted(PolicyRejection):
    """A retry was wanted but the retry budget is spent."""


class PoolExhausted(PolicyRejection):
    """No pooled connection could take the request within ``checkout_timeout``."""

    retryable = True


class Overloaded(PolicyRejection):
    """Backpressure: too many requests in flight above the high watermark."""

    retryable = True


class IdempotencyInProgress(PolicyRejection):
    """A request with this idempotency key is still being processed; try again later."""

    retryable = True


# --- usage --------------------------------------------------------------------------
class UsageError(NexusError):
    """The API was used wrongly."""


class InvalidURL(UsageError, ValueError):
    """A URL could not be parsed or uses an unsupported scheme."""


class ConfigurationError(UsageError, ValueError):
    """An option has an invalid value."""


class MetricError(UsageError, ValueError):
    """A metric was declared wrongly: a bad name or tag, or a name reused with another type or unit."""


class ClientClosed(UsageError):
    """The client was closed by its owner; calls after ``close()`` fail with this."""


class ConnectionClosed(UsageError):
    """The connection was closed by its owner (not broken by the network)."""
