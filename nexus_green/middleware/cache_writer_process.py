"""The parent's side of the L2 writer process: start it, hand it batches through gevent, stop and reap it (L4).

The process runs :mod:`.cache_disk_writer` in a fresh interpreter
(``os.posix_spawn`` of ``sys.executable``: no fork of the application, so it
inherits neither the gevent hub nor other threads' state, and no Python code
runs between fork and exec). Its pipes are non-blocking on this side and
every read and write waits through the hub (``gevent.os.nb_read`` /
``nb_write``), patched or not: the hub never blocks on the writer, and one
batch at a time is in flight (the bytes in flight are one batch's).

Bounds: the caller bounds each :meth:`WriterProcess.write` (a timeout there
leaves the stream out of step, so the caller then calls :meth:`~WriterProcess.kill`);
:meth:`~WriterProcess.stop` closes the input, waits at most ``timeout`` for
the process to finish its work and exit, then kills it. The process dies
with its parent (Linux ``PR_SET_PDEATHSIG``, set by the child itself) and
exits when its input closes, so neither a crash nor a forgotten cache leaves
it behind; an unreaped one is reaped by the next start or stop.

Example::

    >>> import tempfile
    >>> proc = WriterProcess({"directory": tempfile.mkdtemp(), "busy_timeout": 0.05, "size_limit": 2**20,
    ...                       "eviction_policy": "least-recently-stored", "max_items": 100, "settings": {}})
    >>> proc.write(1, [("k", 60.0, 0, ("v", 1))])
    (1, 'ok', 1, [], [])
    >>> proc.stop(5.0)
    0
"""

from __future__ import annotations

import marshal
import os
import re
import signal
import struct
import sys
import weakref
from typing import Any, Optional

import gevent
from gevent import os as gos
from gevent.monkey import get_original

from . import cache_disk_writer

__all__ = ["WriterProcess", "WriterGone", "WriterFault", "can_spawn", "reap_orphans"]

_LEN = struct.Struct(">I")
# Load the writer by its path, with the script directory off sys.path: nothing of nexus_green (nor gevent) is
# imported there, and no file next to it can shadow a standard module.
_BOOT = (
    "import sys; del sys.path[0]; import importlib.util as u; "
    "s = u.spec_from_file_location('nexus_green_l2_writer', sys.argv[1]); m = u.module_from_spec(s); "
    "sys.modules[s.name] = m; s.loader.exec_module(m); sys.exit(m.main(sys.argv[2:]))"
)
_PYTHON = re.compile(r"^(python|pypy)[0-9.]*(\.exe)?$")
# WNOHANG never blocks; after patch_all gevent's own waitpid answers "not yet" for children it did not start.
_waitpid = get_original("os", "waitpid")
_ORPHANS: set[int] = set()  # killed or abandoned writers not reaped yet (a zombie is a leaked process)


class WriterGone(Exception):
    """The writer process is gone (it died, or its pipe broke): the batch in flight may or may not be on disk."""


def can_spawn() -> bool:
    """Whether ``sys.executable`` is a Python interpreter that can run the writer (not e.g. an embedding server).

    Example::

        >>> can_spawn()
        True
    """
    return hasattr(os, "posix_spawn") and bool(sys.executable) and bool(_PYTHON.match(os.path.basename(sys.executable)))


def _reap(pid: int) -> Optional[int]:
    """The exit status of ``pid`` if it ended (reaping it), else None."""
    try:
        done, status = _waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # already reaped (gevent's SIGCHLD watcher reaps every child when patched)
        return 0
    if not done:
        return None
    return os.waitstatus_to_exitcode(status)


def _close_fds(fds: list[int]) -> None:
    for i, fd in enumerate(fds):
        if fd >= 0:
            fds[i] = -1
            os.close(fd)


def _release(fds: list[int], pid: int) -> None:
    if any(fd >= 0 for fd in fds):
        _close_fds(fds)
        _ORPHANS.add(pid)


def _reap_orphans() -> None:
    for pid in list(_ORPHANS):
        if _reap(pid) is not None:
            _ORPHANS.discard(pid)


def reap_orphans(timeout: float) -> bool:
    """Reap the writers killed or let go earlier, waiting at most ``timeout`` seconds; True when none is left.

    Example::

        >>> reap_orphans(0.0)
        True
    """
    deadline = gevent.get_hub().loop.now() + timeout
    _reap_orphans()
    while _ORPHANS and gevent.get_hub().loop.now() < deadline:
        gevent.sleep(0.005)
        _reap_orphans()
    return not _ORPHANS


class WriterProcess:
    """One writer process for one L2 directory, started at construction (see the module docstring).

    ``config`` is what :func:`.cache_disk_writer.serve` reads first: directory,
    busy_timeout, eviction_policy, size_limit, max_items and ``settings`` (values
    that ``marshal`` takes). ``answered`` turns true at the first answer.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        _reap_orphans()
        self.answered = False
        self.returncode: Optional[int] = None
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-c", _BOOT, cache_disk_writer.__file__, str(os.getpid())],
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, to_child, 0), (os.POSIX_SPAWN_DUP2, from_child, 1)],
            )
        except BaseException:
            os.close(self._out)
            os.close(self._in)
            raise
        finally:
            os.close(to_child)
            os.close(from_child)
        gos.make_nonblocking(self._out)
        gos.make_nonblocking(self._in)
        # A cache collected without close(): close the pipes (the process exits at end of input), reap it later.
        self._fds = [self._out, self._in]
        self._finalizer = weakref.finalize(self, _release, self._fds, self.pid)
        self._buf = bytearray()
        self._config: Optional[dict[str, Any]] = config  # sent with the first batch: nothing here can fail late

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<WriterProcess pid={self.pid} {state}>"

    def _send(self, payload: Any) -> None:
        data = marshal.dumps(payload)
        view = memoryview(_LEN.pack(len(data)) + data)
        try:
            while view:
                view = view[gos.nb_write(self._out, view) :]
        except OSError as exc:  # EPIPE: it died; EBADF: it was stopped meanwhile
            raise WriterGone(f"writer process {self.pid} is gone ({type(exc).__name__}: {exc})") from exc

    def _recv(self) -> Any:
        buf = self._buf
        need = 4
        while True:
            if len(buf) >= need:
                if need == 4:
                    need = 4 + _LEN.unpack_from(buf)[0]
                    continue
                payload = marshal.loads(bytes(buf[4:need]))
                del buf[:need]
                return payload
            try:
                chunk = gos.nb_read(self._in, 1 << 16)
            except OSError as exc:
                raise WriterGone(f"writer process {self.pid} is gone ({type(exc).__name__}: {exc})") from exc
            if not chunk:
                raise WriterGone(f"writer process {self.pid} exited (status {self._status()})")
            buf += chunk

    def _status(self) -> str:
        if self.returncode is None:
            self.returncode = _reap(self.pid)
        return "unknown yet" if self.returncode is None else str(self.returncode)

    def write(self, batch_id: int, items: list[tuple[str, float, int, Any]]) -> tuple[Any, ...]:
        """Hand a batch over and wait for its answer (unbounded: the caller bounds it, then kills on a timeout).

        The answer is ``(batch_id, "ok", stored, evicted_keys, failures)`` or ``(batch_id, "fault", type,
        message)``; :class:`WriterGone` when the process died or its pipe broke.
        """
        if self._config is not None:
            config, self._config = self._config, None
            self._send(config)
        self._send((batch_id, items))
        answer = self._recv()
        self.answered = True
        if type(answer) is not tuple or not answer or answer[0] != batch_id:
            self.kill()
            raise WriterGone(f"writer process {self.pid} answered out of step: {answer!r:.100}")
        return answer

    def _close_pipes(self) -> None:
        self._out = self._in = -1
        _close_fds(self._fds)

    def kill(self) -> None:
        """SIGKILL it and close the pipes now, without waiting (it is reaped by the next start or stop)."""
        self._close_pipes()
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - already reaped by someone else
                pass
            _ORPHANS.add(self.pid)

    def abandon(self) -> None:
        """In a forked child of the application: close our copies of the pipes; the process is the parent's."""
        self._close_pipes()
        self.returncode = -1

    def stop(self, timeout: float) -> Optional[int]:
        """Close its input and wait at most ``timeout`` seconds for it to exit, then kill it; its exit status."""
        self._close_pipes()
        deadline = gevent.get_hub().loop.now() + timeout
        while self._status() == "unknown yet" and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.005)
        if self.returncode is None:
            self.kill()
            end = gevent.get_hub().loop.now() + 1.0
            while self._status() == "unknown yet" and gevent.get_hub().loop.now() < end:
                gevent.sleep(0.005)
        if self.returncode is not None:
            _ORPHANS.discard(self.pid)
        _reap_orphans()
        return self.returncode


class WriterFault(Exception):
    """A fault the writer process reported (its transaction was rolled back): ``kind`` is the error's type name.

    Example::

        >>> str(WriterFault("OperationalError", "database or disk is full"))
        'OperationalError: database or disk is full'
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
