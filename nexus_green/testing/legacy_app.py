"""The legacy-app scenario behind ``make demo`` and chaos_tests/test_legacy_app.py (docs/legacy-apps.md).

It owns the whole story of issue 13, in processes of their own so that the
backend can be killed and restarted on its port:

* the **app**: a WSGI app under ``gevent.pywsgi`` in a child process that
  calls ``gevent.monkey.patch_all()`` before any other import. Its handler
  calls the embedded backend through a :class:`nexus_green.Client` and an HTTP
  dependency through ``requests``; each call site is wrapped in ``@timed``,
  ``@cached`` and ``@resilient`` (fallback default, timeouts; every other
  policy at the library's defaults), and ``monitoring.enable()`` sends
  metrics to StatsD;
* the **backend**: ``nexus-green serve`` in another child process;
* in the calling process (not patched: everything it does is gevent's own):
  the HTTP dependency (a tiny pywsgi server), a StatsD listener (a UDP
  socket that records what it receives), the load (greenlets speaking plain
  HTTP/1.0 over gevent sockets) and a health poller.

:func:`run_scenario` kills the backend for ``outage`` seconds mid-load,
restarts it on the same port, waits for recovery and returns a
:class:`ScenarioResult`; :func:`story` turns it into the printed story.
Every child process is killed when the scenario ends, however it ends (and
dies with its parent, through ``PR_SET_PDEATHSIG``).

Library code never imports this module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
import gevent.os
from gevent import socket as gsocket
from gevent import subprocess as gsubprocess
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from .children import preexec_die_with_parent

__all__ = [
    "APP_BOOTSTRAP",
    "ScenarioResult",
    "Sample",
    "StatsDListener",
    "dependency_app",
    "http_get",
    "make_app",
    "run_scenario",
    "story",
]

# The app's entry point: patch first, before anything else is imported.
APP_BOOTSTRAP = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from nexus_green.testing.legacy_app import app_main\n"
    "sys.exit(app_main(sys.argv[1:]))\n"
)
FALLBACK: dict[str, Any] = {"value": None, "source": "fallback"}
_TAG = re.compile(r"^(class|where|kind|breaker|to|level|by|pool|phase|reason|stat|source|fallback)_")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def _json(start_response: StartResponse, status: str, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> list:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


def dependency_app(environ: Environ, start_response: StartResponse) -> list:
    """The HTTP dependency: ``/rate/<item>`` answers a rate after a millisecond."""
    gevent.sleep(0.001)
    item = environ.get("PATH_INFO", "/").rsplit("/", 1)[-1]
    return _json(start_response, "200 OK", {"item": item, "rate": len(item) * 1.5})


def make_app(
    backend_url: str,
    dependency_url: str,
    *,
    request_timeout: float = 0.4,
    cache_ttl: float = 2.0,
) -> tuple[Callable[[Environ, StartResponse], list], Callable[[], None]]:
    """The legacy WSGI app and a function that closes what it opened.

    ``/order/<item>`` calls the backend and the dependency (each within
    ``request_timeout``: the whole answer within twice that) and says in the
    ``X-Backend``/``X-Dependency`` headers where each answer came from
    (``live``, ``cache`` or ``fallback``); ``/health`` is the monitoring
    health report; ``/events`` the breaker transitions seen on the bus.
    """
    import requests

    from nexus_green import Client, FallbackConfig, TimeoutConfig, cached, default_bus, resilient, timed

    client = Client(backend_url)
    transitions: list[dict[str, Any]] = []

    def on_state(event: Any) -> None:
        transitions.append({"at": time.time(), **{k: str(event.attrs.get(k)) for k in ("breaker", "old", "new")}})

    unsubscribe = default_bus.subscribe(on_state, prefix="breaker.state")
    policy: dict[str, Any] = {
        "fallback": FallbackConfig(default=FALLBACK),
        "timeout": TimeoutConfig(request=request_timeout, overall=request_timeout),
    }

    def live(value: Any) -> bool:  # a fallback answer is never cached
        return isinstance(value, dict) and value.get("source") == "live"

    @timed("app.backend")
    @cached(ttl=cache_ttl, should_cache=live)
    @resilient(name="backend", **policy)
    def backend_lookup(item: str) -> dict[str, Any]:
        r = client.request(item.encode(), fid=1, timeout=request_timeout)
        return {"value": r.body.decode(), "source": "live", "at": time.monotonic()}

    @timed("app.dependency")
    @cached(ttl=cache_ttl, should_cache=live)
    @resilient(name="dependency", **policy)
    def dependency_rate(item: str) -> dict[str, Any]:
        r = requests.get(f"{dependency_url}/rate/{item}", timeout=request_timeout)
        r.raise_for_status()
        return {"value": r.json()["rate"], "source": "live", "at": time.monotonic()}

    def source(answer: dict[str, Any], started: float) -> str:
        if answer.get("source") != "live":
            return "fallback"
        return "live" if answer["at"] >= started else "cache"

    def app(environ: Environ, start_response: StartResponse) -> list:
        from nexus_green.monitoring import enabled

        path = environ.get("PATH_INFO", "/")
        if path.startswith("/order/"):
            item = path.rsplit("/", 1)[-1]
            started = time.monotonic()
            stock, rate = backend_lookup(item), dependency_rate(item)
            sources = (("X-Backend", source(stock, started)), ("X-Dependency", source(rate, started)))
            return _json(start_response, "200 OK", {"stock": stock["value"], "rate": rate["value"]}, sources)
        if path == "/health":
            running = enabled()
            report = running.health() if running else None
            body = {"status": report.status if report else "unknown", "reasons": list(report.reasons) if report else []}
            return _json(start_response, "200 OK", body)
        if path == "/events":
            return _json(start_response, "200 OK", {"transitions": transitions})
        return _json(start_response, "404 Not Found", {"error": path})

    def close() -> None:
        unsubscribe()
        client.close()
        for site in (backend_lookup, dependency_rate):
            site.cache.close()  # type: ignore[attr-defined]  # the @cached L2s on disk: three descriptors each

    return app, close


def app_main(argv: list[str]) -> int:
    """The app process (started with :data:`APP_BOOTSTRAP`): serve until stdin closes."""
    import argparse

    from nexus_green.monitoring import disable, enable

    ap = argparse.ArgumentParser(prog="legacy-app")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--dependency", required=True)
    ap.add_argument("--statsd", required=True)
    ap.add_argument("--request-timeout", type=float, default=0.4)
    ap.add_argument("--cache-ttl", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--dashboard-port", type=int, default=-1, help="serve the live dashboard here (0: any port)")
    args = ap.parse_args(argv)
    # A short rate window and tick, so that health follows a short outage.
    running = enable(statsd=args.statsd, prefix="legacy", interval=args.interval, history_interval=0.5)
    app, close = make_app(args.backend, args.dependency, request_timeout=args.request_timeout, cache_ttl=args.cache_ttl)
    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    dashboard = None
    if args.dashboard_port >= 0:  # the second line: where the dashboard is (docs/dashboard.md)
        from nexus_green.dashboard import serve

        dashboard = serve(running.monitor, port=args.dashboard_port)
        print(f"dashboard on {dashboard.url}", flush=True)
    try:
        # The demo closes our stdin (or kills us) to stop us; a plain read would block the hub.
        os.set_blocking(0, False)
        while gevent.os.nb_read(0, 4096):
            pass
    finally:
        if dashboard is not None:
            dashboard.stop()
        server.stop(timeout=1)
        close()
        disable()
    return 0


class StatsDListener:
    """A UDP socket on loopback that records every StatsD line it receives, with the time it came."""

    def __init__(self) -> None:
        self.sock = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.lines: list[tuple[float, str]] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            data = self.sock.recv(65536)
            now = time.time()
            self.lines.extend((now, line) for line in data.decode(errors="replace").splitlines() if line)

    def close(self) -> None:
        self._reader.kill()
        self.sock.close()

    def families(self, prefix: str = "legacy.") -> dict[str, int]:
        """Lines received per metric family (the name without its prefix and tag segments)."""
        out: Counter[str] = Counter()
        for _, line in self.lines:
            out[family(line, prefix)] += 1
        return dict(sorted(out.items()))

    def total(self, name: str, *, since: float = 0.0, prefix: str = "legacy.") -> float:
        """The sum of the counter lines of family ``name`` received at or after ``since``."""
        total = 0.0
        for at, line in self.lines:
            if at >= since and line.endswith("|c") and family(line, prefix) == name:
                total += float(line.split(":", 1)[1].split("|", 1)[0])
        return total


def family(line: str, prefix: str = "legacy.") -> str:
    """``legacy.calls.failed.class_X.where_Y:1|c`` -> ``calls.failed``.

    Example::

        >>> family("legacy.calls.failed.class_ConnectionLost.where_link:3|c")
        'calls.failed'
        >>> family("other:1|g")
        'other'
    """
    name = line.split(":", 1)[0].removeprefix(prefix)
    kept: list[str] = []
    for segment in name.split("."):
        if _TAG.match(segment):
            break
        kept.append(segment)
    return ".".join(kept)


def http_get(port: int, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 GET to 127.0.0.1 over a gevent socket: (status, headers, body)."""
    with gsocket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


class _Child:
    """A child process that prints ``listening on HOST:PORT`` first; killed on close()."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None, ready_timeout: float = 20.0) -> None:
        self.argv = argv
        self.proc = gsubprocess.Popen(
            argv,
            stdin=gsubprocess.PIPE,
            stdout=gsubprocess.PIPE,
            env=env,
            preexec_fn=preexec_die_with_parent(),
        )
        with gevent.Timeout(ready_timeout, RuntimeError(f"{argv[2:4]} did not start within {ready_timeout}s")):
            line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"unexpected first line from {argv}: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def close(self, grace: float = 0.0) -> None:
        """Kill the process; with ``grace``, first ask it to stop (stdin closed, SIGINT) and wait that long."""
        if grace and self.proc.poll() is None:
            # The app stops when its stdin closes, ``serve`` on SIGINT; both exit normally
            # (so coverage, when it runs them, saves its data).
            self.proc.stdin.close()
            self.proc.send_signal(signal.SIGINT if "serve" in self.argv else 0)
            try:
                self.proc.wait(timeout=grace)
            except gsubprocess.TimeoutExpired:  # pragma: no cover - it did not stop in time
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _backend(port: int) -> _Child:
    return _Child([sys.executable, "-m", "nexus_green.cli", "serve", "--port", str(port)])


@dataclass(frozen=True)
class Sample:
    """One HTTP request of the load: when it started and ended (time.time()), and what came back."""

    start: float
    end: float
    status: int  # 0: no answer (timed out or the connection failed)
    backend: str = ""
    dependency: str = ""


@dataclass
class ScenarioResult:
    """What :func:`run_scenario` saw; :func:`story` prints it."""

    greenlets: int
    outage: float
    request_timeout: float
    budget: float
    killed_at: float = 0.0
    restarted_at: float = 0.0
    ended_at: float = 0.0
    started_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    health: list[tuple[float, str]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    statsd: dict[str, int] = field(default_factory=dict)
    statsd_failures: float = 0.0
    statsd_fallbacks: float = 0.0
    statsd_completed_after_restart: float = 0.0
    statsd_breaker_transitions: dict[str, float] = field(default_factory=dict)
    dashboard_url: str = ""

    @property
    def status_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(s.status for s in self.samples).items()))

    def sources(self, which: str) -> dict[str, int]:
        return dict(sorted(Counter(getattr(s, which) for s in self.samples if s.status == 200).items()))

    @property
    def slowest(self) -> float:
        return max((s.end - s.start for s in self.samples), default=0.0)

    @property
    def first_success_after_restart(self) -> Optional[float]:
        """Seconds from the restart to the first live backend answer of a request started after it."""
        ends = [s.end for s in self.samples if s.backend == "live" and s.start >= self.restarted_at]
        return min(ends) - self.restarted_at if ends else None

    def health_between(self, start: float, end: float) -> list[str]:
        return [status for at, status in self.health if start <= at <= end]

    @property
    def final_health(self) -> str:
        return self.health[-1][1] if self.health else "unknown"


def run_scenario(
    *,
    greenlets: int = 50,
    warmup: float = 3.0,
    outage: float = 4.0,
    recovery: float = 12.0,
    request_timeout: float = 0.4,
    cache_ttl: float = 2.0,
    think: float = 0.02,
    items: int = 300,
    dashboard_port: Optional[int] = 0,
    log: Optional[Callable[[str], None]] = None,
) -> ScenarioResult:
    """Run the whole scenario (see the module docstring) and return what it saw.

    Load runs for ``warmup`` seconds, then the backend is killed for
    ``outage`` seconds and restarted on its port; the load goes on until
    health is healthy again after a live answer (at most ``recovery``
    seconds after the restart), then one more second. The app serves the
    live dashboard on ``dashboard_port`` (0: a port the OS chooses; None: no
    dashboard) and the log says its URL.
    """
    say = log or (lambda _: None)
    budget = 2 * request_timeout  # two dependencies, each within request_timeout
    result = ScenarioResult(greenlets=greenlets, outage=outage, request_timeout=request_timeout, budget=budget)
    with ExitStack() as stack:
        statsd = StatsDListener()
        stack.callback(statsd.close)
        dependency = WSGIServer(("127.0.0.1", 0), dependency_app, log=None, error_log=None)
        dependency.start()
        stack.callback(dependency.stop, timeout=1)
        backend = _backend(0)
        port = backend.port
        children = [backend]

        def close_children() -> None:
            for child in children:
                child.close(grace=3.0)

        stack.callback(close_children)
        say(f"backend: nexus-green serve on 127.0.0.1:{port} (pid {backend.proc.pid})")
        cache_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="legacy-app-cache-"))
        env = dict(os.environ, XDG_CACHE_HOME=cache_home)
        app_argv = [sys.executable, "-c", APP_BOOTSTRAP, "--backend", f"tcp://127.0.0.1:{port}"]
        app_argv += ["--dependency", f"http://127.0.0.1:{dependency.server_port}", "--statsd", statsd.address]
        app_argv += ["--request-timeout", str(request_timeout), "--cache-ttl", str(cache_ttl)]
        if dashboard_port is not None:
            app_argv += ["--dashboard-port", str(dashboard_port)]
        app = _Child(app_argv, env=env)
        children.append(app)
        say(f"app: patched gevent.pywsgi on 127.0.0.1:{app.port} (pid {app.proc.pid}); StatsD on {statsd.address}")
        if dashboard_port is not None:
            with gevent.Timeout(20.0, RuntimeError("the app did not say where its dashboard is")):
                line = app.proc.stdout.readline().decode().strip()
            result.dashboard_url = line.removeprefix("dashboard on ")
            say(f"dashboard: {result.dashboard_url} (live while the demo runs)")
        stop = Event()

        def load(n: int) -> None:
            i = n
            while not stop.is_set():
                i = (i * 7 + 13) % items
                start = time.time()
                try:
                    status, headers, _ = http_get(app.port, f"/order/item{i}", timeout=budget + 2.0)
                    sample = Sample(
                        start, time.time(), status, headers.get("x-backend", ""), headers.get("x-dependency", "")
                    )
                except (OSError, gevent.Timeout):
                    sample = Sample(start, time.time(), 0)
                result.samples.append(sample)
                gevent.sleep(think)

        def poll_health() -> None:
            while not stop.is_set():
                try:
                    _, _, body = http_get(app.port, "/health", timeout=2.0)
                    result.health.append((time.time(), json.loads(body)["status"]))
                except (OSError, ValueError, gevent.Timeout):
                    result.health.append((time.time(), "unreachable"))
                gevent.sleep(0.25)

        result.started_at = time.time()
        workers = [gevent.spawn(load, n) for n in range(greenlets)] + [gevent.spawn(poll_health)]
        stack.callback(gevent.killall, workers)
        gevent.sleep(warmup)
        say(f"{greenlets} greenlets load the app; killing the backend for {outage:g}s")
        backend.close()
        result.killed_at = time.time()
        gevent.sleep(outage)
        backend = _backend(port)
        children.append(backend)
        result.restarted_at = time.time()
        say(f"backend restarted on the same port (pid {backend.proc.pid}); waiting for recovery")
        while time.time() < result.restarted_at + recovery:
            recovered = result.first_success_after_restart is not None
            if (
                recovered
                and result.health
                and result.health[-1][0] > result.restarted_at
                and result.final_health == "healthy"
            ):
                break
            gevent.sleep(0.1)
        gevent.sleep(1.0)
        stop.set()
        gevent.joinall(workers, timeout=budget + 3.0)
        result.ended_at = time.time()
        try:
            _, _, body = http_get(app.port, "/events", timeout=5.0)
            result.transitions = json.loads(body)["transitions"]
        except (OSError, ValueError, gevent.Timeout) as exc:
            say(f"the app did not tell its breaker transitions: {exc!r}")
        gevent.sleep(1.0)  # the app's last flush interval
        result.statsd = statsd.families()
        result.statsd_failures = statsd.total("calls.failed") + statsd.total("rejections")
        result.statsd_fallbacks = statsd.total("fallback.served")
        result.statsd_completed_after_restart = statsd.total("requests.completed", since=result.restarted_at)
        for _, line in statsd.lines:
            m = re.match(r"legacy\.breaker\.transitions\.breaker_.*\.to_([a-z-]+):(\d+)\|c$", line)
            if m:
                result.statsd_breaker_transitions[m[1]] = result.statsd_breaker_transitions.get(m[1], 0) + float(m[2])
    return result


def story(r: ScenarioResult) -> Iterator[str]:
    """The printed story of a run."""
    t0 = r.killed_at

    def rel(t: float) -> str:
        return f"{t - t0:+.2f}s"

    yield f"requests: {len(r.samples)} from {r.greenlets} greenlets; HTTP status {r.status_counts}"
    yield f"  backend answers:    {r.sources('backend')}"
    yield f"  dependency answers: {r.sources('dependency')}"
    yield f"  slowest answer {r.slowest * 1000:.0f} ms (budget {r.budget * 1000:.0f} ms + 100 ms)"
    yield f"timeline (0 = backend killed; restarted at {rel(r.restarted_at)}):"
    for t in r.transitions:
        yield f"  {rel(t['at'])} breaker {t['breaker']}: {t['old']} -> {t['new']}"
    first = r.first_success_after_restart
    yield (
        f"  recovery: first live backend answer {first:.2f}s after the restart"
        if first is not None
        else "  recovery: none"
    )
    during = Counter(r.health_between(r.killed_at, r.restarted_at))
    yield f"health: before {Counter(r.health_between(r.started_at, r.killed_at))}"
    yield f"        during the outage {dict(during)}"
    yield f"        after the restart {dict(Counter(r.health_between(r.restarted_at, r.ended_at)))}; final {r.final_health}"
    yield f"StatsD received {sum(r.statsd.values())} lines; per family:"
    for name, count in r.statsd.items():
        yield f"  {name:<32} {count}"
    yield (
        f"  failures counted {r.statsd_failures:g}; fallbacks {r.statsd_fallbacks:g}; breaker transitions "
        f"{r.statsd_breaker_transitions}; requests completed after the restart {r.statsd_completed_after_restart:g}"
    )
