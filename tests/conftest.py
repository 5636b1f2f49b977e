"""Shared fixtures: leak checks that every I/O test can opt into.

``leakcheck`` records open file descriptors and live library greenlets before
the test and fails it if either grew afterwards (after a bounded grace period
for greenlets that are finishing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import gevent
import pytest

from nexus_green.greenlets import live_greenlets


def open_fds() -> int:
    """Number of open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def settle(check, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    """Yield to the hub until ``check()`` is true or ``timeout`` passes."""
    deadline = gevent.get_hub().loop.now() + timeout
    while not check():
        if gevent.get_hub().loop.now() > deadline:
            return False
        gevent.sleep(0.01)
    return True


@pytest.fixture
def leakcheck() -> Iterator[None]:
    gevent.sleep(0)
    fds_before = open_fds()
    greenlets_before = set(live_greenlets())
    yield
    ok = settle(lambda: not (set(live_greenlets()) - greenlets_before) and open_fds() <= fds_before)
    leaked = set(live_greenlets()) - greenlets_before
    assert ok, f"leak: greenlets {sorted(g.name for g in leaked)}, fds {fds_before} -> {open_fds()}"


@pytest.fixture(autouse=True, scope="session")
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point XDG_CACHE_HOME at a temporary directory for the whole run.

    The default L2 cache persists under ``$XDG_CACHE_HOME/nexus_green``: tests
    must never read or write the real user's cache. Child processes inherit it.
    """
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved
