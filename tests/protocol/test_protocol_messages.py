"""Request and Response: frozen, slotted, keyword-only data with small helpers."""

from __future__ import annotations

import dataclasses

import pytest

from nexus_green.protocol.messages import Request, Response, make_response


def test_request_defaults() -> None:
    r = Request()
    assert (r.body, r.fid, dict(r.headers), r.timeout, r.idempotent, r.endpoint, r.context) == (
        b"",
        0,
        {},
        None,
        False,
        "",
        {},
    )
    assert Request().context is not Request().context  # no shared mutable default


def test_request_with_headers_merges_without_mutating() -> None:
    base = Request(body=b"x", fid=2, headers={"a": "1", "b": "2"})
    merged = base.with_headers({"b": "3", "c": "4"})
    assert dict(merged.headers) == {"a": "1", "b": "3", "c": "4"}
    assert dict(base.headers) == {"a": "1", "b": "2"}
    assert (merged.body, merged.fid) == (b"x", 2)


def test_request_replace() -> None:
    r = Request(body=b"x", fid=1)
    r2 = r.replace(fid=9, idempotent=True)
    assert (r2.fid, r2.idempotent, r2.body) == (9, True, b"x")
    assert (r.fid, r.idempotent) == (1, False)
    with pytest.raises(TypeError):
        r.replace(nope=1)


@pytest.mark.parametrize("cls", [Request, Response])
def test_frozen_slotted_kw_only(cls: type) -> None:
    obj = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.body = b"y"  # type: ignore[misc]
    assert not hasattr(obj, "__dict__")
    with pytest.raises(TypeError):
        cls(b"positional")


def test_response_ok_and_text() -> None:
    assert Response().ok and Response().code == 200
    assert not Response(code=503).ok and not Response(code=0).ok
    assert Response(body="héllo".encode()).text() == "héllo"
    assert Response(body="héllo".encode("latin-1")).text("latin-1") == "héllo"
    with pytest.raises(UnicodeDecodeError):
        Response(body=b"\xff").text()


def test_response_replace() -> None:
    r = Response(body=b"a", qid=3, tp=0x80)
    assert r.replace(cached="memory").cached == "memory"
    assert r.replace(body=b"b") == Response(body=b"b", qid=3, tp=0x80)


def test_make_response_equals_constructor() -> None:
    r = make_response(b"x", 503, 1, 2, {"h": "v"}, 0.25, "conn-1", 0x20)
    assert r == Response(body=b"x", code=503, fid=1, qid=2, headers={"h": "v"}, latency=0.25, conn_id="conn-1", tp=0x20)
    assert r.cached == "" and not r.ok
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.code = 200  # type: ignore[misc]
