"""spawn(): contextvars copied into the child, naming, tracking in live_greenlets()."""

from __future__ import annotations

import contextvars

import gevent
import pytest
from gevent.event import Event

from nexus_green.greenlets import live_greenlets, spawn

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_l0_greenlets_var", default="unset")


def test_spawn_copies_contextvars_into_the_child() -> None:
    token = VAR.set("parent")
    try:
        assert spawn(VAR.get).get(timeout=5) == "parent"
        assert gevent.spawn(VAR.get).get(timeout=5) == "unset"  # why spawn() exists: plain gevent does not copy
    finally:
        VAR.reset(token)


def test_context_is_a_copy_taken_at_spawn_time() -> None:
    token = VAR.set("before")
    go = Event()

    def child() -> tuple:
        first = VAR.get()
        VAR.set("child")  # must not leak back into the parent
        go.wait(timeout=5)
        return first, VAR.get()

    try:
        g = spawn(child)
        VAR.set("after")  # a change after spawn is not seen by the child
        go.set()
        assert g.get(timeout=5) == ("before", "child")
        assert VAR.get() == "after"
    finally:
        VAR.reset(token)


def test_args_kwargs_and_name() -> None:
    g = spawn(lambda a, b=0: a + b, 2, b=3, name="adder")
    assert g.get(timeout=5) == 5
    assert g.name == "nexus_green:adder"
    unnamed = spawn(lambda: None)
    unnamed.join(timeout=5)
    assert not unnamed.name.startswith("nexus_green:")


def test_live_greenlets_tracks_until_finished(leakcheck: None) -> None:
    release = Event()
    g = spawn(release.wait, 5, name="waiter")
    assert g in live_greenlets()
    release.set()
    g.join(timeout=5)
    assert g.dead and g not in live_greenlets()


def test_failed_greenlet_is_not_live(leakcheck: None) -> None:
    def boom() -> None:
        raise KeyError("x")

    hub = gevent.get_hub()
    old = hub.print_exception
    hub.print_exception = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        g = spawn(boom, name="boom")
        g.join(timeout=5)
    finally:
        hub.print_exception = old  # type: ignore[method-assign]
    assert g.dead and not g.successful()
    with pytest.raises(KeyError):
        g.get(timeout=0)
    assert g not in live_greenlets()
