"""Resilience overhead benchmark: @resilient and ResilienceMiddleware (no faults) against bare calls.

Three sections, each a set of variants interleaved round by round (A, B, C,
... then again) so that they share warm-up, CPU frequency and noise; the
figure per variant is the best (least disturbed) of its rounds, in
microseconds per call (the JSON also has the medians).

``functions`` (in-process): the policies around a plain function.
    bare, resilient (@resilient with the defaults: breaker, retry + budget,
    idempotency key, overall deadline, request timeout), resilient-no-timeout,
    resilient-all (+ bulkhead + fallback), one decorator each, and a plain
    gevent.Timeout armed per call; on two workloads: ``noop`` (the function
    returns at once: pure overhead) and ``yield`` (one gevent.sleep(0)).

``pipeline`` (in-process, the Client's request path without the Client): a
terminal handler that returns a prebuilt Response, called with a Request.
    bare          the terminal itself
    bare+key      the terminal given a copy of the request with an idempotency key
    resilient     the terminal under @resilient (defaults)
    middleware    Pipeline([ResilienceMiddleware()]).wrap(terminal) (defaults)
    for ``Request.idempotent`` False (the Client's default) and True (the
    middleware then sends an idempotency key: retries may resend it).

``client-stub`` (in-process): the same Client variants as ``client`` below,
with the connection pool replaced by a stub that answers at once: what each
variant costs the Client's own CPU per call, without the network and the hub.

``client`` (loopback): a Client against an EmbeddedServer in another process
(its echo Fid), ``--concurrency`` greenlets sharing the calls.
    bare          Client.request
    bare+key      Client.request with an idempotency-key header (what a key costs on the wire)
    noop-middleware  a Client with a middleware that only calls call_next (the pipeline path itself)
    resilient     Client.request under @resilient (defaults)
    middleware    Client(middlewares=[ResilienceMiddleware()]).request (defaults)
    for idempotent False and True; wall microseconds per call, and the
    client process's CPU microseconds per call (the steadier figure on a
    shared machine).

Each round runs in a child process. ``--before DIR`` also runs every round
with nexus_green imported from DIR (e.g. ``git worktree add /tmp/before HEAD``
made before a change), alternating with this tree's rounds, against the same
server process, and prints both side by side. ``--after DIR`` takes the
"after" figures (and the server) from DIR instead of this tree.

Short samples (``--calls``, ``--client-calls``) in many interleaved rounds
(``--inner-rounds``) let the best sample find a quiet moment on a busy machine.

Run: ``python bench/bench_resilience.py [--calls 1000] [--client-calls 2000]
[--concurrency 50] [--rounds 5] [--inner-rounds 20] [--before DIR] [--after DIR]
[--sections functions,pipeline,client-stub,client]``.
Writes bench/results/resilience.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

from common import RESULTS, check_code_origin, code_env, cpu_seconds, run_child

SECTIONS = ("functions", "pipeline", "client-stub", "client")
BODY = b"x" * 64
KEYED = {"idempotency-key": "0123456789abcdef" * 2}  # a request carrying an idempotency key


# ----------------------------------------------------------------------------- in the child: functions


def noop(x: int) -> int:
    return x


def yielding(x: int) -> int:
    import gevent

    gevent.sleep(0)
    return x


def gevent_timeout(seconds: float) -> Callable[[Callable[[int], int]], Callable[[int], int]]:
    import gevent

    def decorate(fn: Callable[[int], int]) -> Callable[[int], int]:
        def wrapper(x: int) -> int:
            t = gevent.Timeout(seconds)
            t.start()
            try:
                return fn(x)
            finally:
                t.close()

        return wrapper

    return decorate


def function_variants(base: Callable[[int], int], tag: str) -> dict[str, Callable[[int], int]]:
    from nexus_green.events import EventBus
    from nexus_green.resilience import (
        BulkheadConfig,
        FallbackConfig,
        bulkhead,
        circuit_breaker,
        fallback,
        resilient,
        retry,
        timeout,
    )

    bus = EventBus()  # no subscribers: what an app without monitoring pays
    return {
        "bare": base,
        "resilient": resilient(idempotent=True, bus=bus)(base),
        "resilient-no-timeout": resilient(idempotent=True, timeout=None, bus=bus)(base),
        "resilient-all": resilient(
            idempotent=True,
            bulkhead=BulkheadConfig(name=f"bench-{tag}", max_concurrent=100),
            fallback=FallbackConfig(default=0),
            bus=bus,
        )(base),
        "circuit_breaker": circuit_breaker(bus=bus)(base),
        "retry": retry(idempotent=True, bus=bus)(base),
        "timeout": timeout(30.0)(base),
        "gevent.Timeout": gevent_timeout(30.0)(base),
        "bulkhead": bulkhead(f"bench-solo-{tag}", max_concurrent=100)(base),
        "fallback": fallback(default=0, bus=bus)(base),
    }


def time_per_call(fn: Callable[[Any], Any], arg: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(arg)
    return (time.perf_counter() - start) / calls * 1e6


def interleave(fns: dict[str, Callable[[Any], Any]], arg: Any, calls: int, rounds: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        time_per_call(fn, arg, calls // 10 or 1)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_per_call(fn, arg, calls))
    return samples


def section_functions(calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    return {
        tag: interleave(function_variants(base, tag), 1, calls, rounds)
        for tag, base in (("noop", noop), ("yield", yielding))
    }


# ----------------------------------------------------------------------------- in the child: pipeline


def section_pipeline(calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    from nexus_green.events import EventBus
    from nexus_green.pipeline import Pipeline
    from nexus_green.protocol.messages import Request, Response
    from nexus_green.resilience import ResilienceMiddleware, resilient

    reply = Response(body=BODY, fid=1)

    def terminal(request: Any) -> Any:
        return reply

    def keyed(request: Any) -> Any:  # what adding a key costs at the least: a copy of the request
        return terminal(request.with_headers(KEYED))

    out = {}
    for idem in (False, True):
        bus = EventBus()
        fns = {
            "bare": terminal,
            "bare+key": keyed,
            "resilient": resilient(idempotent=idem, bus=bus)(terminal),
            "middleware": Pipeline([ResilienceMiddleware(bus=bus)]).wrap(terminal),
        }
        out[f"idempotent={idem}"] = interleave(fns, Request(body=BODY, fid=1, idempotent=idem), calls, rounds)
    return out


# ----------------------------------------------------------------------------- in the child: client


def client_round(call: Callable[[], Any], calls: int, concurrency: int) -> tuple[float, float]:
    import gevent

    per = calls // concurrency

    def worker() -> None:
        for _ in range(per):
            call()

    c0, t0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)], raise_error=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = per * concurrency
    return wall / n * 1e6, cpu / n * 1e6


class NoOp:
    """A middleware that only calls call_next: what the Client's pipeline path itself costs."""

    name = "noop"

    def __call__(self, request: Any, call_next: Any) -> Any:
        return call_next(request)


def client_variants(clients: dict[str, Any], bus: Any, idem: bool) -> dict[str, Callable[[], Any]]:
    """One call of each Client variant (the same arguments for all)."""
    import functools

    from nexus_green.resilience import resilient

    bare = clients["bare"]
    return {
        "bare": functools.partial(bare.request, BODY, 1, idempotent=idem),
        "bare+key": functools.partial(bare.request, BODY, 1, KEYED, idempotent=idem),
        "noop-middleware": functools.partial(clients["noop"].request, BODY, 1, idempotent=idem),
        "resilient": functools.partial(resilient(idempotent=idem, bus=bus)(bare.request), BODY, 1, idempotent=idem),
        "middleware": functools.partial(clients["middleware"].request, BODY, 1, idempotent=idem),
    }


def make_clients(url: str) -> tuple[dict[str, Any], Any]:
    """A bare Client, one with a no-op middleware, one with ResilienceMiddleware (defaults); the bare one's bus."""
    from nexus_green import Client
    from nexus_green.events import EventBus
    from nexus_green.resilience import ResilienceMiddleware

    bus, mw_bus = EventBus(), EventBus()
    clients = {
        "bare": Client(url, heartbeat_interval=None, bus=bus),
        "noop": Client(url, heartbeat_interval=None, bus=bus, middlewares=[NoOp()]),
        "middleware": Client(url, heartbeat_interval=None, bus=mw_bus, middlewares=[ResilienceMiddleware(bus=mw_bus)]),
    }
    return clients, bus


def section_client(port: int, calls: int, concurrency: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    clients, bus = make_clients(f"tcp://127.0.0.1:{port}")
    out: dict[str, dict[str, list[float]]] = {}
    try:
        for c in clients.values():
            c.connect()
        for idem in (False, True):
            calls_of = client_variants(clients, bus, idem)
            for call in calls_of.values():  # warm-up
                client_round(call, calls, concurrency)
            wall: dict[str, list[float]] = {name: [] for name in calls_of}
            cpu: dict[str, list[float]] = {name: [] for name in calls_of}
            for _ in range(rounds):
                for name, call in calls_of.items():
                    w, c = client_round(call, calls, concurrency)
                    wall[name].append(w)
                    cpu[name].append(c)
            out[f"idempotent={idem} wall"] = wall
            out[f"idempotent={idem} cpu"] = cpu
    finally:
        for c in clients.values():
            c.close()
    return out


def taking_one(call: Callable[[], Any]) -> Callable[[Any], Any]:
    """``call`` in the one-argument form :func:`interleave` times."""
    return lambda _arg: call()


def section_client_stub(calls: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    from nexus_green.protocol.messages import Response

    reply = Response(body=BODY, fid=1)

    class StubPool:
        """The pool's one call on the request path, answered at once: the Client's own CPU per call."""

        def request_until(self, body: bytes, fid: int, headers: Any, tp: int, until: Any, by_deadline: bool) -> Any:
            return reply

        def close(self) -> None:
            pass

    clients, bus = make_clients("tcp://127.0.0.1:9")  # never connected: the pools are replaced
    for c in clients.values():
        c.pool.close()
        c.pool = StubPool()
    out = {}
    for idem in (False, True):
        calls_of = client_variants(clients, bus, idem)
        out[f"idempotent={idem}"] = interleave(
            {name: taking_one(call) for name, call in calls_of.items()}, None, calls, rounds
        )
    return out


def child(args: argparse.Namespace) -> int:
    origin = check_code_origin(args.code)
    sections = args.sections.split(",")
    result: dict[str, Any] = {"nexus_green_from": origin}
    if "functions" in sections:
        result["functions"] = section_functions(args.calls, args.inner_rounds)
    if "pipeline" in sections:
        result["pipeline"] = section_pipeline(args.calls, args.inner_rounds)
    if "client-stub" in sections:
        result["client-stub"] = section_client_stub(args.calls, args.inner_rounds)
    if "client" in sections:
        result["client"] = section_client(args.port, args.client_calls, args.concurrency, args.inner_rounds)
    print(json.dumps(result))
    return 0


def serve() -> int:
    import gevent

    from nexus_green.testing import EmbeddedServer

    server = EmbeddedServer().start()
    print(f"listening on {server.address[0]}:{server.address[1]}", flush=True)
    try:
        # Until the parent closes our stdin; read off the hub, so the server keeps answering.
        gevent.get_hub().threadpool.spawn(sys.stdin.read).get()
    finally:
        server.stop()
    return 0


# ----------------------------------------------------------------------------- the parent


def summarize(rounds: list[dict[str, Any]], stat: Callable[[list[float]], float]) -> dict[str, Any]:
    """Per section, group and variant: ``stat`` (min or median) over every sample of every child round."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        if section not in rounds[0]:
            continue
        out[section] = {}
        for group in rounds[0][section]:
            out[section][group] = {
                name: stat([v for r in rounds for v in r[section][group][name]]) for name in rounds[0][section][group]
            }
    return out


def table(after: dict[str, Any], before: Optional[dict[str, Any]]) -> list[str]:
    lines = []
    for section, groups in after.items():
        for group, figures in groups.items():
            head = f"{'variant':<22}{'us/call':>10}{'over bare':>11}"
            if before is not None:
                head += f"{'before':>10}{'over bare':>11}"
            lines += ["", f"[{section}] {group}", head]
            for name, value in figures.items():
                row = f"{name:<22}{value:>10.2f}{value - figures['bare']:>11.2f}"
                if before is not None:
                    b = before[section][group]
                    row += f"{b[name]:>10.2f}{b[name] - b['bare']:>11.2f}"
                lines.append(row)
            if "middleware" not in figures:
                continue
            derived = [("middleware - resilient", lambda f: f["middleware"] - f["resilient"])]
            if "noop-middleware" in figures:  # the Client's pipeline path, which any middleware pays
                derived.append(
                    (
                        "  minus the pipeline path",
                        lambda f: f["middleware"] - f["resilient"] - (f["noop-middleware"] - f["bare"]),
                    )
                )
            for label, value_of in derived:
                row = f"{label:<26}{value_of(figures):>6.2f}{'':>11}"
                if before is not None:
                    row += f"{value_of(before[section][group]):>10.2f}"
                lines.append(row)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000, help="in-process calls per variant per inner round")
    ap.add_argument("--client-calls", type=int, default=2000, help="Client calls per variant per inner round")
    ap.add_argument("--concurrency", type=int, default=50, help="greenlets sharing the Client calls")
    ap.add_argument("--rounds", type=int, default=5, help="child processes per tree (alternating with --before)")
    ap.add_argument("--inner-rounds", type=int, default=20, help="interleaved rounds inside each child")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--before", help="a tree to import nexus_green from for the 'before' figures")
    ap.add_argument("--after", help="a tree for the 'after' figures and the server (default: this one)")
    ap.add_argument("--code", help=argparse.SUPPRESS)  # a child's tree
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve()
    if args.child:
        return child(args)

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=code_env(args.after),
    )
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    trees: dict[str, Optional[str]] = {"after": args.after}
    if args.before:
        trees["before"] = args.before
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
    try:
        for _ in range(args.rounds):
            for name, code in trees.items():
                argv = [
                    __file__,
                    "--child",
                    "--port",
                    str(port),
                    "--calls",
                    str(args.calls),
                    "--client-calls",
                    str(args.client_calls),
                    "--concurrency",
                    str(args.concurrency),
                    "--inner-rounds",
                    str(args.inner_rounds),
                    "--sections",
                    args.sections,
                ]
                if code:
                    argv += ["--code", code]
                runs[name].append(run_child(argv, timeout=600, env=code_env(code)))
    finally:
        server_cpu = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
        server.stdin.close()
        server.wait(10)
    # The best sample is the least disturbed one (the machine is shared); the medians go to the JSON too.
    after = summarize(runs["after"], min)
    before = summarize(runs["before"], min) if args.before else None
    import gevent

    print(
        f"resilience overhead, microseconds per call (best of {args.rounds} child rounds x {args.inner_rounds});"
        f" client section: {args.concurrency} greenlets, {args.client_calls} calls per round,"
        f" EmbeddedServer peer CPU {server_cpu:.0%} of a core"
    )
    print(f"after = nexus_green from {runs['after'][0]['nexus_green_from']}")
    if before is not None:
        print(f"before = nexus_green from {runs['before'][0]['nexus_green_from']}")
    results: dict[str, Any] = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "python": sys.version.split()[0],
        "gevent": gevent.__version__,
        "machine": platform.machine(),
        "server_cpu": server_cpu,
        "best": {"after": after, "before": before},
        "median": {name: summarize(r, statistics.median) for name, r in runs.items()},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resilience.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(after, before)))
    print(f"\nwrote {RESULTS / 'resilience.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
