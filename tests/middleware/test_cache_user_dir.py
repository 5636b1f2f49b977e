"""Issue 13, item 11: the default L2 persists in a per-user cache directory (XDG), private and capped.

Every test sets ``XDG_CACHE_HOME`` itself (monkeypatch). The persistence
tests go through a real Client and an EmbeddedServer: a "restart" is a new
middleware, cache and Client on the same application name. The module also
runs after ``gevent.monkey.patch_all()`` (last test).
"""

from __future__ import annotations

import os
import stat
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest

from nexus_green import Client
from nexus_green.errors import ConfigurationError
from nexus_green.middleware.cache import (
    DEFAULT_SIZE_LIMIT,
    CacheMiddleware,
    DiskCache,
    TwoLevelCache,
    cache_home,
    cached,
    default_cache_dir,
)
from nexus_green.testing import EmbeddedServer, run_module_patched

pytestmark = pytest.mark.usefixtures("leakcheck")

FID = 42


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def backend() -> Iterator[EmbeddedServer]:
    server = EmbeddedServer()
    calls: list[bytes] = []
    server.register(FID, lambda frame: calls.append(frame.body) or b"answer:" + frame.body)
    server.calls = calls  # type: ignore[attr-defined]
    with server:
        yield server


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def fetch(url: str, app: str, body: bytes) -> tuple[str, str]:
    mw = CacheMiddleware(when={FID}, app=app)
    try:
        with Client(url, middlewares=[mw]) as client:
            r = client.request(body, fid=FID)
        return r.cached, mw.cache.l2.directory  # type: ignore[union-attr]
    finally:
        mw.cache.close()


def test_default_l2_persists_per_app_across_restarts_through_a_client(xdg: Path, backend: EmbeddedServer) -> None:
    level, directory = fetch(backend.url, "billing", b"q")
    assert level == "" and directory == str(xdg / "nexus_green" / "billing" / "cache")
    assert fetch(backend.url, "billing", b"q")[0] == "l2"  # a restart: served from disk
    assert fetch(backend.url, "reports", b"q")[0] == ""  # another application does not see billing's entries
    assert backend.calls == [b"q", b"q"]  # type: ignore[attr-defined]


def test_directories_are_made_0700_whatever_the_umask(xdg: Path) -> None:
    old = os.umask(0o002)
    try:
        l2 = DiskCache(app="billing", name="users")
    finally:
        os.umask(old)
    l2.close()
    for d in (xdg / "nexus_green", xdg / "nexus_green" / "billing", xdg / "nexus_green" / "billing" / "users"):
        assert mode(d) == 0o700, (d, oct(mode(d)))
    assert os.path.isdir(l2.directory)  # persistent: close keeps it


def test_size_cap_reaches_diskcache(xdg: Path) -> None:
    with TwoLevelCache(l1=None, app="capped") as default:
        default.set("k", b"v")
    with TwoLevelCache(l1=None, l2=DiskCache(app="capped", name="small", size_limit=1 << 20)) as small:
        small.set("k", b"v")
    with diskcache.Cache(default_cache_dir("capped", "cache")) as seen:
        assert seen.size_limit == DEFAULT_SIZE_LIMIT == 256 << 20
    with diskcache.Cache(default_cache_dir("capped", "small")) as seen:
        assert seen.size_limit == 1 << 20
    with pytest.raises(ConfigurationError, match="size_limit"):
        DiskCache(temporary=True, size_limit=0)


@pytest.mark.parametrize("level", ["nexus_green", "app", "cache"])
def test_a_directory_others_can_write_is_refused(xdg: Path, level: str) -> None:
    target = {"nexus_green": xdg / "nexus_green", "app": xdg / "nexus_green" / "app", "cache": None}[level]
    leaf = xdg / "nexus_green" / "app" / "cache"
    leaf.mkdir(parents=True)
    bad = target or leaf
    os.chmod(bad, 0o777 if level == "cache" else 0o770)
    with pytest.raises(ConfigurationError) as info:
        CacheMiddleware(when={FID}, app="app")
    assert str(bad) in str(info.value) and "writable by group or others" in str(info.value)


def test_an_explicit_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigurationError, match=str(shared)):
        DiskCache(str(shared))
    with pytest.raises(ConfigurationError, match="chmod 700"):
        cached(directory=str(shared))(lambda: 1)
    fresh = tmp_path / "new" / "dir"
    DiskCache(str(fresh)).close()
    assert mode(fresh) == 0o700 and mode(fresh.parent) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user owns needs root")
def test_a_directory_another_user_owns_is_refused(xdg: Path) -> None:
    leaf = xdg / "nexus_green" / "app" / "cache"
    leaf.mkdir(parents=True, mode=0o700)
    os.chown(leaf, 4242, -1)
    with pytest.raises(ConfigurationError, match="belongs to uid 4242"):
        TwoLevelCache(app="app")


def test_temporary_mode_is_still_available(xdg: Path, backend: EmbeddedServer) -> None:
    mw = CacheMiddleware(when={FID}, l2="temporary")
    l2 = mw.cache.l2
    assert l2 is not None and not l2.directory.startswith(str(xdg))
    with Client(backend.url, middlewares=[mw]) as client:
        client.request(b"t", fid=FID)
        assert client.request(b"t", fid=FID).cached == "l1"
    assert l2.flush(5) and mode(Path(l2.directory)) == 0o700 and l2.stats().size == 1
    mw.cache.close()
    assert not os.path.exists(l2.directory)
    assert not (xdg / "nexus_green").exists()
    with pytest.raises(ConfigurationError, match="'temporary'"):
        TwoLevelCache(l2="tmp")
    with pytest.raises(ConfigurationError, match="not both"):
        DiskCache("/somewhere", temporary=True)


def test_cached_defaults_to_a_persistent_namespace_per_function(xdg: Path) -> None:
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x

    first = cached(app="svc")(square)
    assert first(3) == 9
    first.cache.close()  # type: ignore[attr-defined]
    again = cached(app="svc")(square)  # the same function after a restart
    assert again(3) == 9 and calls == [3]
    directory = again.cache.l2.directory  # type: ignore[attr-defined]
    again.cache.close()  # type: ignore[attr-defined]
    assert Path(directory).parent == xdg / "nexus_green" / "svc"
    assert Path(directory).name.endswith("square") and "<" not in directory


def test_cache_home_follows_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_home() == str(tmp_path / ".cache")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the specification says to ignore it
    assert cache_home() == str(tmp_path / ".cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir("a b/c", "..") == str(tmp_path / "x" / "nexus_green" / "a_b_c" / "default")
    long = default_cache_dir("app", "n" * 300)
    assert len(os.path.basename(long)) < 120 and long != default_cache_dir("app", "n" * 299)


def test_default_app_is_the_program_name(xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = types.ModuleType("__main__")
    script.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", script)
    monkeypatch.setattr(sys, "argv", ["/opt/svc/billing-worker.py", "--flag"])
    assert default_cache_dir() == str(xdg / "nexus_green" / "billing-worker" / "cache")
    package = types.ModuleType("__main__")
    package.__spec__ = types.SimpleNamespace(name="reports.__main__")  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", package)
    assert default_cache_dir(name="x") == str(xdg / "nexus_green" / "reports" / "x")
    monkeypatch.setitem(sys.modules, "__main__", script)
    monkeypatch.setattr(sys, "argv", [])
    assert default_cache_dir() == str(xdg / "nexus_green" / "default" / "cache")


def test_an_unusable_cache_home_is_a_miss_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: EmbeddedServer
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    mw = CacheMiddleware(when={FID}, app="app")
    try:
        with Client(backend.url, middlewares=[mw]) as client:
            assert client.request(b"z", fid=FID).body == b"answer:z"
        assert mw.cache.l2 is not None and mw.cache.l2.stats().errors >= 1
    finally:
        mw.cache.close()


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
