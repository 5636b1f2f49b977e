"""A real ``redis-server`` for tests: started on a free loopback port, stopped, killed and restarted.

The shared-state features (docs/shared-state.md) are proven against the
server users run, not a fake. :class:`RedisServer` runs Debian's
``redis-server`` binary in a child process with no persistence, on
127.0.0.1 and a port the OS picked, and can stop it and bring it back on the
same port (the "Redis stopped mid-run" tests).

Example::

    >>> import shutil
    >>> if shutil.which("redis-server"):
    ...     with RedisServer() as server:
    ...         print(server.url.startswith("redis://127.0.0.1:"), server.ping())
    ... else:
    ...     print(True, True)
    True True
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Optional

from .children import preexec_die_with_parent

__all__ = ["RedisServer", "RedisServerUnavailable", "redis_server_binary"]


class RedisServerUnavailable(RuntimeError):
    """``redis-server`` is not installed, or did not answer PING in time after starting."""


def redis_server_binary() -> Optional[str]:
    """The path of ``redis-server`` on this machine, or None (``make redis`` installs Debian's package)."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_id(port: int, timeout: float) -> Optional[int]:
    """The ``process_id`` the server on ``port`` reports (``INFO server``), or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            while b"process_id:" not in data or not data.split(b"process_id:", 1)[1].count(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
            return int(data.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0])
    except (OSError, ValueError):
        return None


def _ping(port: int, timeout: float) -> bool:
    """One RESP ``PING`` on a plain blocking socket (no client library needed, works patched or not)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1 for tests: :meth:`start`, :meth:`stop`, :meth:`kill`, :meth:`restart`.

    ``port=0`` picks a free port once; :meth:`restart` comes back on the same
    one, so clients holding the URL reconnect. Nothing is persisted (no RDB, no
    AOF); the working directory is a temporary one removed by :meth:`close`.

    Example::

        >>> import shutil
        >>> if shutil.which("redis-server"):
        ...     server = RedisServer().start()
        ...     server.stop(); up = server.ping(); _ = server.restart()
        ...     print(up, server.ping()); server.close()
        ... else:
        ...     print(False, True)
        False True
    """

    def __init__(self, *, port: int = 0, ready_timeout: float = 10.0, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or _free_port()
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._dir = tempfile.mkdtemp(prefix="nexus-green-redis-")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def ping(self, timeout: float = 0.5) -> bool:
        """True when the server answers PING within ``timeout``."""
        return _ping(self.port, timeout)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; raises :class:`RedisServerUnavailable` otherwise."""
        if self.running:
            return self
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerUnavailable("redis-server is not installed (make redis installs Debian's redis-server)")
        args = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self._dir,
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        # It dies with this process: a test killed by its timeout runs no finalizer.
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec_die_with_parent()
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._reap()
                raise RedisServerUnavailable(f"redis-server exited at start on port {self.port}: {err[-400:]}")
            # Ours answers, not another server already on the port (then ours exits: caught above).
            if _process_id(self.port, 0.2) == self._proc.pid:
                return self
            time.sleep(0.02)
        self.kill()
        raise RedisServerUnavailable(
            f"redis-server did not answer PING on port {self.port} within {self.ready_timeout} s"
        )

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignored
                proc.kill()
                proc.wait(timeout=5)
            if proc.stderr is not None:
                proc.stderr.close()

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM) and wait for it; a no-op when it is not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        self._reap()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; a no-op when it is not running."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port, empty."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        pid = self._proc.pid if self.running and self._proc is not None else None
        return f"<RedisServer 127.0.0.1:{self.port} {'running' if self.running else 'stopped'} pid={pid}>"
