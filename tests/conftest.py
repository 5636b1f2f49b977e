"""Shared fixtures: leak checks that every I/O test can opt into.

``leakcheck`` records open file descriptors and live library greenlets before
the test and fails it if either grew afterwards (after a bounded grace period
for greenlets that are finishing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

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


# ---------------------------------------------------------------- a real browser (dashboard, trace viewer)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, installed when missing (make test's browser target does it first).

    Skips the test, saying why, only where they cannot be installed (no root or no apt-get).
    """
    if os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium and chromium-driver are missing and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"installing chromium failed: {' '.join(cmd)}: {proc.stderr[-500:]}")


@contextlib.contextmanager
def _headless_chromium(window: str) -> Iterator[Any]:
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="nexus-green-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def headless_chromium() -> Callable[[str], Any]:
    """``with headless_chromium("1400,1700") as driver:`` a selenium driver of Debian's headless chromium.

    Started with the flags this machine needs (no sandbox as root, no background
    networking: the network is closed) and a fresh profile, quit on exit.
    """
    return _headless_chromium


# ---------------------------------------------------------------- a real redis-server (shared state, issue 20)
def _ensure_redis_server() -> None:
    """Debian's redis-server, installed when missing (make test's redis target does it first).

    Skips the test, saying why, only where it cannot be installed (no root or no apt-get).
    """
    if shutil.which("redis-server"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("redis-server is missing and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"installing redis-server failed: {' '.join(cmd)}: {proc.stderr[-500:]}")


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A fresh :class:`nexus_green.testing.redis_server.RedisServer` on a free loopback port, closed afterwards."""
    _ensure_redis_server()
    from nexus_green.testing.redis_server import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()
