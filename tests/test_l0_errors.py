"""The NexusError hierarchy: families, retryable defaults, extra fields, chaining."""

from __future__ import annotations

import pytest

import nexus_green.errors as E

# class -> (family, retryable by default)
TABLE = {
    E.NexusTimeout: (E.NexusTimeout, True),
    E.ConnectTimeout: (E.NexusTimeout, True),
    E.RequestTimeout: (E.NexusTimeout, True),
    E.DeadlineExceeded: (E.NexusTimeout, False),
    E.HandshakeTimeout: (E.NexusTimeout, True),
    E.NetworkError: (E.NetworkError, True),
    E.ConnectError: (E.NetworkError, True),
    E.DNSError: (E.NetworkError, True),
    E.ConnectionRefused: (E.NetworkError, True),
    E.ConnectionLost: (E.NetworkError, True),
    E.HeartbeatTimeout: (E.NetworkError, True),
    E.TLSError: (E.NetworkError, False),
    E.CertificateUntrusted: (E.NetworkError, False),
    E.CertificateExpired: (E.NetworkError, False),
    E.HostnameMismatch: (E.NetworkError, False),
    E.PinMismatch: (E.NetworkError, False),
    E.ClientCertificateRejected: (E.NetworkError, False),
    E.ProxyError: (E.NetworkError, True),
    E.ProtocolError: (E.ProtocolError, False),
    E.LocalProtocolError: (E.ProtocolError, False),
    E.RemoteProtocolError: (E.ProtocolError, False),
    E.FrameTooLarge: (E.ProtocolError, False),
    E.CompressionError: (E.ProtocolError, False),
    E.PolicyRejection: (E.PolicyRejection, False),
    E.CircuitOpen: (E.PolicyRejection, False),
    E.RateLimited: (E.PolicyRejection, False),
    E.BulkheadFull: (E.PolicyRejection, False),
    E.RetryBudgetExhausted: (E.PolicyRejection, False),
    E.PoolExhausted: (E.PolicyRejection, True),
    E.Overloaded: (E.PolicyRejection, True),
    E.IdempotencyInProgress: (E.PolicyRejection, True),
    E.UsageError: (E.UsageError, False),
    E.InvalidURL: (E.UsageError, False),
    E.ConfigurationError: (E.UsageError, False),
    E.MetricError: (E.UsageError, False),
    E.ClientClosed: (E.UsageError, False),
    E.ConnectionClosed: (E.UsageError, False),
}
FAMILIES = {E.NexusTimeout, E.NetworkError, E.ProtocolError, E.RemoteError, E.PolicyRejection, E.UsageError}


def test_every_exported_name_is_a_nexus_error_and_covered_here() -> None:
    exported = {getattr(E, n) for n in E.__all__}
    assert all(issubclass(c, E.NexusError) for c in exported)
    assert exported - set(TABLE) == {E.NexusError, E.RemoteError}


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda c: c.__name__)
def test_family_and_retryable_default(cls: type) -> None:
    family, retryable = TABLE[cls]
    err = cls("boom")
    assert isinstance(err, family) and isinstance(err, E.NexusError)
    assert [f for f in FAMILIES if isinstance(err, f)] == [family]  # exactly one family
    assert err.retryable is retryable
    assert str(err) == "boom"


def test_instance_may_override_retryable_without_touching_the_class() -> None:
    assert E.ConnectionLost("x", retryable=False).retryable is False
    assert E.ConnectionLost("x").retryable is True
    assert E.CircuitOpen("x", retryable=True).retryable is True
    assert E.CircuitOpen.retryable is False
    assert E.NexusError().retryable is False and str(E.NexusError()) == ""


def test_you_closed_it_versus_it_broke() -> None:
    assert isinstance(E.ClientClosed(), E.UsageError) and not isinstance(E.ClientClosed(), E.NetworkError)
    assert isinstance(E.ConnectionClosed(), E.UsageError) and not isinstance(E.ConnectionClosed(), E.NetworkError)
    assert isinstance(E.ConnectionLost(), E.NetworkError) and not isinstance(E.ConnectionLost(), E.UsageError)
    assert isinstance(E.HeartbeatTimeout(), E.ConnectionLost)
    assert isinstance(E.HandshakeTimeout(), E.ConnectTimeout)


@pytest.mark.parametrize(
    "cls, reason",
    [
        (E.TLSError, "handshake_failed"),
        (E.CertificateUntrusted, "untrusted_issuer"),
        (E.CertificateExpired, "expired"),
        (E.HostnameMismatch, "hostname_mismatch"),
        (E.PinMismatch, "pin_mismatch"),
        (E.ProxyError, "general_failure"),
    ],
)
def test_reason_fields(cls: type, reason: str) -> None:
    assert cls("x").reason == reason
    overridden = cls("x", reason="custom", retryable=True)
    assert (overridden.reason, overridden.retryable) == ("custom", True)
    assert cls("x").reason == reason


def test_protocol_error_offset() -> None:
    assert E.ProtocolError("x").offset is None
    err = E.FrameTooLarge("too big", offset=42)
    assert err.offset == 42 and isinstance(err, E.RemoteProtocolError)
    assert isinstance(E.CompressionError("c"), E.RemoteProtocolError)
    assert not isinstance(E.LocalProtocolError("l"), E.RemoteProtocolError)


def test_remote_error_code_and_response() -> None:
    err = E.RemoteError("fid=3 answered code 503", code=503, response="resp")
    assert (err.code, err.response, err.retryable) == (503, "resp", False)
    assert E.RemoteError("x", code=429, retryable=True).retryable is True
    assert E.RemoteError("x", code=500).response is None
    with pytest.raises(TypeError):
        E.RemoteError("no code")  # type: ignore[call-arg]


def test_rate_limited_retry_after() -> None:
    assert E.RateLimited("x").retry_after == 0.0
    assert E.RateLimited("x", retry_after=1.5).retry_after == 1.5


@pytest.mark.parametrize("cls", [E.InvalidURL, E.ConfigurationError, E.MetricError])
def test_value_errors(cls: type) -> None:
    with pytest.raises(ValueError):
        raise cls("bad")
    assert issubclass(cls, E.UsageError)


def test_chaining_keeps_the_cause() -> None:
    with pytest.raises(E.ConnectionRefused) as ei:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as exc:
            raise E.ConnectionRefused("connection refused by 127.0.0.1:1") from exc
    assert isinstance(ei.value.__cause__, ConnectionRefusedError)
    assert ei.value.__suppress_context__ is True


def test_every_error_survives_pickling_with_its_attributes() -> None:
    # Process pools and multiprocessing pickle exceptions; keyword-only
    # arguments (RemoteError's required code) must not break that.
    import pickle

    import nexus_green.errors as errors_module
    from nexus_green.protocol.messages import Response

    classes = [
        c for c in vars(errors_module).values() if isinstance(c, type) and issubclass(c, errors_module.NexusError)
    ]
    assert len(classes) > 20
    for cls in classes:
        err = cls.__new__(cls)
        errors_module.NexusError.__init__(err, f"{cls.__name__} happened", retryable=True)
        err.extra = 7  # type: ignore[attr-defined]
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.__dict__ == err.__dict__
    response = Response(body=b"busy", code=503, fid=3, qid=9)
    remote = errors_module.RemoteError("fid=3 answered code 503", code=503, response=response)
    back = pickle.loads(pickle.dumps(remote))
    assert back.code == 503 and back.response.body == b"busy" and not back.retryable
    assert str(back) == "fid=3 answered code 503"
