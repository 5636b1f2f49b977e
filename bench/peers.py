"""Echo peers for the client-side benchmarks: the C epoll peer when a C compiler exists, the Python one otherwise.

:func:`start_peer` starts a peer in its own process and returns a :class:`Peer`
(``port``, ``pid``, ``kind``, ``cpu_seconds()``, ``stop()``):

* ``kind="c"``: bench/peer/epoll_echo.c, built with ``cc -O2`` into
  bench/.build/epoll_echo (rebuilt when the source is newer). Single-threaded,
  non-blocking, answers in place from its input buffer: it is never the
  bottleneck of a Python client;
* ``kind="embedded"``: ``python -m nexus_green.cli serve --port 0`` (the
  library's EmbeddedServer, a gevent server);
* ``kind="auto"`` (default): ``c`` when a C compiler is found, else ``embedded``;
  the peer says which it is (``Peer.describe()``), and every benchmark prints it.

Run ``python bench/peers.py [auto|c|embedded]`` to start one by hand (Ctrl-C stops
it). ``python bench/peers.py tls CERT KEY`` runs an EmbeddedServer with TLS (for
bench_seed_targets.py's TLS connect times).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from common import cpu_seconds

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "peer" / "epoll_echo.c"
BUILD = HERE / ".build"
BINARY = BUILD / "epoll_echo"


def compiler() -> Optional[str]:
    """The C compiler to use ($CC, cc, gcc or clang), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def build_native(source: Path, output: Path, *, shared: bool = False, force: bool = False) -> Optional[Path]:
    """Compile ``source`` into ``output`` with ``cc -O2`` (a shared library when ``shared``); None without a compiler.

    Rebuilt only when the source is newer than the output. A failing compile
    raises RuntimeError with the compiler's output.
    """
    cc = compiler()
    if cc is None:
        return None
    if not force and output.exists() and output.stat().st_mtime >= source.stat().st_mtime:
        return output
    output.parent.mkdir(exist_ok=True)
    tmp = output.with_name(f"{output.name}.{os.getpid()}.tmp")
    flags = ["-shared", "-fPIC"] if shared else []
    out = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", *flags, "-o", str(tmp), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"building {source} with {cc} failed:\n{out.stderr}")
    os.replace(tmp, output)  # atomic: concurrent builders never run a half-written binary
    return output


def build_c_peer(force: bool = False) -> Optional[Path]:
    """Build bench/.build/epoll_echo from bench/peer/epoll_echo.c; None when no C compiler exists."""
    return build_native(SOURCE, BINARY, force=force)


class Peer:
    """A running echo peer process: ``port``, ``pid``, ``kind`` ("c" or "embedded")."""

    def __init__(self, proc: subprocess.Popen[str], port: int, kind: str) -> None:
        self.proc = proc
        self.port = port
        self.kind = kind
        self.pid = proc.pid
        self.stats = ""

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def describe(self) -> str:
        if self.kind == "c":
            return f"C epoll echo peer ({BINARY.relative_to(HERE.parent)}) on port {self.port}"
        return f"Python embedded peer (nexus-green serve, no C compiler found) on port {self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the peer has used so far."""
        return cpu_seconds(self.pid)

    def stop(self) -> str:
        """Stop the peer (SIGINT, then kill after 5 s); returns the C peer's stats line ("" otherwise). Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None and not self.proc.stderr.closed:  # stop() may be called again
            err = self.proc.stderr.read()
            self.proc.stderr.close()
            self.stats = next((line for line in err.splitlines() if line.startswith("stats ")), "")
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.stats

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _started(argv: list[str], kind: str) -> Peer:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait(5)
        raise RuntimeError(f"peer {argv[0]} did not start: {line!r} {err[-2000:]}")
    return Peer(proc, int(line.rsplit(":", 1)[1]), kind)


def start_peer(kind: str = "auto", port: int = 0) -> Peer:
    """Start an echo peer: ``"c"``, ``"embedded"`` or ``"auto"`` (C when a compiler exists)."""
    if kind not in ("auto", "c", "embedded"):
        raise ValueError(f"peer kind must be auto, c or embedded, not {kind!r}")
    if kind in ("auto", "c"):
        binary = build_c_peer()
        if binary is not None:
            return _started([str(binary), str(port)], "c")
        if kind == "c":
            raise RuntimeError("no C compiler found (tried $CC, cc, gcc, clang): use the embedded peer")
    return _started([sys.executable, "-m", "nexus_green.cli", "serve", "--port", str(port)], "embedded")


def start_tls_peer(cert_file: str, key_file: str) -> Peer:
    """An EmbeddedServer with TLS (certificate and key files) in its own process."""
    return _started([sys.executable, str(Path(__file__).resolve()), "tls", cert_file, key_file], "embedded-tls")


def _serve_tls(cert_file: str, key_file: str) -> None:
    import ssl

    import gevent
    import gevent.event
    import gevent.ssl

    from nexus_green.testing import EmbeddedServer

    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server = EmbeddedServer(tls=ctx).start()
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    stop.wait()
    server.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["tls"]:
        _serve_tls(argv[1], argv[2])
        return 0
    peer = start_peer(argv[0] if argv else "auto")
    print(peer.describe(), flush=True)
    try:
        peer.proc.wait()
    except KeyboardInterrupt:
        pass
    print(peer.stop())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
