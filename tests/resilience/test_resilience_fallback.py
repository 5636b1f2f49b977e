"""Fallback levels and routing by error class."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_green.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigurationError,
    ConnectionLost,
    ConnectTimeout,
    Overloaded,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
)
from nexus_green.events import EventBus
from nexus_green.resilience.fallbacks import (
    BACKUP,
    CACHE,
    DEFAULT,
    MISSING,
    Fallback,
    FallbackConfig,
    fallback,
)


@pytest.mark.parametrize(
    "exc, plan",
    [
        (ConnectionLost(), (CACHE, DEFAULT, BACKUP)),
        (ConnectionResetError(), (CACHE, DEFAULT, BACKUP)),
        (OSError(), (CACHE, DEFAULT, BACKUP)),
        (RequestTimeout(), (DEFAULT, BACKUP, CACHE)),
        (ConnectTimeout(), (DEFAULT, BACKUP, CACHE)),
        (TimeoutError(), (DEFAULT, BACKUP, CACHE)),
        (CircuitOpen(), (BACKUP, CACHE, DEFAULT)),
        (BulkheadFull(), (BACKUP, CACHE, DEFAULT)),
        (Overloaded(), (BACKUP, CACHE, DEFAULT)),
        (RemoteError(code=503), (BACKUP, CACHE, DEFAULT)),
        # issue 13: a fallback covers every failure, not only the routed ones
        (RemoteError(code=500), (CACHE, DEFAULT, BACKUP)),
        (RemoteProtocolError(), (CACHE, DEFAULT, BACKUP)),
        (ValueError(), (CACHE, DEFAULT, BACKUP)),
        (ConfigurationError(), ()),
        (KeyboardInterrupt(), ()),
    ],
)
def test_routing_by_error_class(exc: BaseException, plan: tuple) -> None:
    assert Fallback().plan(exc) == plan


def raising(exc: BaseException) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fn


def test_network_error_serves_the_cache_then_falls_through() -> None:
    bus = EventBus()
    used: list[Any] = []
    bus.subscribe(used.append, prefix="fallback.")
    cache = {"k": "cached"}
    fb = Fallback(cache=cache, default="dflt", bus=bus)
    assert fb.run(raising(ConnectionLost()), key="k") == "cached"
    assert used[-1].attrs["level"] == CACHE
    assert fb.run(raising(ConnectionLost()), key="miss") == "dflt"
    assert used[-1].attrs["level"] == DEFAULT
    assert Fallback(cache=cache).run(raising(ConnectionLost()), key="miss", backup=lambda: "bk") == "bk"
    assert used[-1].attrs["level"] == DEFAULT  # that one had its own bus


def test_cache_may_be_a_callable_and_misses_are_none_or_keyerror() -> None:
    def lookup(key: str) -> Any:
        if key == "boom":
            raise KeyError(key)
        return {"k": "v"}.get(key)

    fb = Fallback(cache=lookup)
    assert fb.lookup("k") == "v" and fb.lookup("nope") is MISSING and fb.lookup("boom") is MISSING
    assert Fallback(cache={}).lookup(["unhashable"]) is MISSING
    assert Fallback().lookup("k") is MISSING


def test_timeout_serves_the_default_not_the_cache() -> None:
    fb = Fallback(cache={"k": "cached"}, default="dflt")
    assert fb.run(raising(RequestTimeout()), key="k") == "dflt"


def test_unavailable_goes_to_backup_and_without_one_to_the_other_levels() -> None:
    fb = Fallback(cache={"k": "cached"}, default="dflt")
    assert fb.run(raising(CircuitOpen()), key="k", backup=lambda: "backup") == "backup"
    assert fb.run(raising(CircuitOpen()), key="k") == "cached"
    assert fb.run(raising(CircuitOpen()), key="miss") == "dflt"
    with pytest.raises(CircuitOpen):
        Fallback(cache={}).run(raising(CircuitOpen()), key="k")


def test_errors_outside_on_are_raised() -> None:
    fb = Fallback(cache={"k": "cached"}, default="dflt", on=(OSError,))
    with pytest.raises(ValueError):
        fb.run(raising(ValueError("bug")), key="k", backup=lambda: "backup")
    assert fb.run(raising(ConnectionResetError()), key="k") == "cached"
    with pytest.raises(ConnectionLost):  # a NexusError, not an OSError
        fb.run(raising(ConnectionLost()), key="k")


def test_a_default_of_none_is_a_real_default() -> None:
    assert Fallback(default=None).run(raising(TimeoutError())) is None


def test_remember_stores_successes_and_adapt_converts() -> None:
    cache: dict[Any, Any] = {}
    fb = Fallback(cache=cache, remember=True)
    assert fb.run(lambda: "fresh", key="k") == "fresh"
    assert cache == {"k": "fresh"}
    assert fb.run(raising(ConnectionLost()), key="k", adapt=lambda level, v: (level, v)) == (CACHE, "fresh")
    assert "cache=True" in repr(fb)


def test_custom_routes() -> None:
    fb = Fallback(default="d", routes=((KeyError, DEFAULT), (ConnectionLost, "fail")))
    assert fb.run(raising(KeyError("x"))) == "d"
    with pytest.raises(ConnectionLost):
        fb.run(raising(ConnectionLost()))


def test_decorator_passes_arguments_to_key_and_backup() -> None:
    calls: list[Any] = []

    @fallback(backup=lambda x, y=0: calls.append((x, y)) or "bk", cache={(1,): "c1"})
    def primary(x: int, y: int = 0) -> str:
        raise RemoteError("down", code=503) if x == 2 else ConnectionLost()

    assert primary(1) == "c1"
    assert primary(2, y=5) == "bk" and calls == [(2, 5)]
    assert primary.fallback.config.cache == {(1,): "c1"}  # type: ignore[attr-defined]


def test_bad_fallback_configuration() -> None:
    with pytest.raises(ConfigurationError, match="unknown fallback level"):
        FallbackConfig(routes=((ValueError, "pray"),))
    with pytest.raises(ConfigurationError, match="no get"):
        FallbackConfig(cache=42)
    with pytest.raises(ConfigurationError, match="only works in FallbackMiddleware"):
        fallback(backup="backup:7600")
    with pytest.raises(ConfigurationError, match="unknown fallback option"):
        Fallback(levels=3)
