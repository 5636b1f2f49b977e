"""The Swift NexusKit plan's targets (set against CocoaAsyncSocket), measured for nexus_green on this machine.

=========================  ==========================  =================================================
target                     Swift plan                   how it is measured here
=========================  ==========================  =================================================
connect time               < 80 ms                      median and p95 of N ``Client(url).connect()``
                                                        (a new Client each time, then closed), plain TCP
                                                        to the C echo peer and TLS (certificates from
                                                        nexus_green.testing's TLS kit) to an embedded
                                                        TLS server in its own process; the first connect
                                                        of each (lazy imports, ssl context) is shown
                                                        apart as "cold"
throughput                 > 12,000 QPS                 64 B bodies, 50 greenlets on one Client, closed
                                                        loop for --seconds
memory                     < 40 MB                      peak RSS during full load (64 B at c=50, then at
                                                        c=500) minus the RSS of the warmed-up interpreter
                                                        (imports done, Client connected, 200 requests
                                                        sent)
CPU at 12k QPS             < 25% of a core              requests paced by a token schedule (request i is
                                                        due at t0 + i / 12,000) over 50 greenlets;
                                                        process CPU (getrusage, user + system) over the
                                                        paced window / its wall time
p95 latency at 12k QPS     < 50 ms                      from each request's *intended* send time (its
                                                        token), so a client that falls behind is charged
                                                        for the wait (no coordinated omission)
=========================  ==========================  =================================================

Each measurement runs in its own child process against the C epoll peer
(bench/peers.py; the embedded Python peer when no C compiler exists). The peer's
CPU during each child is reported.

Run: ``python bench/bench_seed_targets.py [--seconds 5] [--connects 50] [--rate 12000] [--quick]``.
Writes bench/results/seed_targets.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, PeakRSS, check_code_origin, code_env, percentile, run_child
from peers import Peer, start_peer, start_tls_peer

BODY = b"x" * 64
TARGETS = {
    "connect_tcp_ms": ("connect time, plain TCP (median)", "<", 80.0),
    "connect_tls_ms": ("connect time, TLS (median)", "<", 80.0),
    "qps": ("throughput, 64 B, c=50 (req/s)", ">", 12_000.0),
    "rss_mb": ("RSS above warmed-up interpreter (MB)", "<", 40.0),
    "cpu_share": ("CPU at paced 12k QPS (share of a core)", "<", 0.25),
    "p95_ms": ("p95 latency at paced 12k QPS (ms)", "<", 50.0),
}


# ---------------------------------------------------------------- children
def child_connect(url: str, n: int, ca_file: Optional[str]) -> dict[str, Any]:
    from nexus_green import Client

    options: dict[str, Any] = {}
    if ca_file:
        from nexus_green import TLSConfig

        options["tls"] = TLSConfig(ca_file=ca_file)
    times: list[float] = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        client = Client(url, heartbeat_interval=None, **options)
        client.connect(timeout=10)
        times.append(time.perf_counter() - t0)
        client.request(b"ping", fid=1, timeout=5)  # the link works end to end
        client.close()
    warm = sorted(times[1:])
    return {
        "cold_ms": times[0] * 1000,
        "median_ms": percentile(warm, 0.5) * 1000,
        "p95_ms": percentile(warm, 0.95) * 1000,
        "max_ms": warm[-1] * 1000,
        "connects": n,
    }


def child_load(url: str, seconds: float) -> dict[str, Any]:
    """QPS at 64 B, c=50, and peak RSS under full load (c=50, then c=500) above the warmed-up interpreter."""
    import gevent

    from nexus_green import Client

    client = Client(url)
    client.connect()
    for _ in range(200):
        client.request(BODY, fid=1, timeout=5)
    import gc

    gc.collect()

    def load(conc: int, window: float) -> int:
        count = [0]
        stop = time.perf_counter() + window
        req = client.request

        def worker() -> None:
            n = 0
            pc = time.perf_counter
            while pc() < stop:
                req(BODY, fid=1, timeout=5)
                n += 1
            count[0] += n

        gevent.joinall([gevent.spawn(worker) for _ in range(conc)], raise_error=True)
        return count[0]

    rss = PeakRSS().start()
    t0 = time.perf_counter()
    n50 = load(50, seconds)
    qps = n50 / (time.perf_counter() - t0)
    t1 = time.perf_counter()
    n500 = load(500, seconds / 2)
    qps500 = n500 / (time.perf_counter() - t1)
    rss.stop()
    client.close()
    return {
        "qps": qps,
        "qps_c500": qps500,
        "rss_base_mb": rss.base / 2**20,
        "rss_peak_mb": rss.peak / 2**20,
        "rss_mb": (rss.peak - rss.base) / 2**20,
    }


def child_paced(url: str, seconds: float, rate: float, conc: int) -> dict[str, Any]:
    """``rate`` requests per second on a token schedule over ``conc`` greenlets; CPU and latency from intent.

    The same schedule is then run with a no-op in place of the request: the
    pacing itself (a timer and a switch per request) costs CPU that is the
    benchmark's, not the client's; it is reported and subtracted.
    """
    import gevent

    from nexus_green import Client

    client = Client(url)
    client.connect()
    for _ in range(200):
        client.request(BODY, fid=1, timeout=5)
    total = int(rate * seconds)
    pc = time.perf_counter
    sleep = gevent.sleep

    def run(req: Any) -> tuple[float, float, list[float], int]:
        tokens = itertools.count()
        lat: list[float] = []
        errors = [0]

        def worker(t0: float) -> None:
            while True:
                i = next(tokens)
                if i >= total:
                    return
                due = t0 + i / rate
                wait = due - pc()
                if wait > 0:
                    sleep(wait)
                try:
                    req(BODY, fid=1, timeout=5)
                except Exception:
                    errors[0] += 1
                lat.append(pc() - due)

        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = pc()
        t0 = w0 + 0.01
        gevent.joinall([gevent.spawn(worker, t0) for _ in range(conc)])
        wall = pc() - w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu, wall, lat, errors[0]

    cpu, wall, lat, errors = run(client.request)
    client.close()

    def nothing(body: bytes, fid: int, timeout: float) -> None:
        return None

    harness_cpu, harness_wall, _, _ = run(nothing)
    lat.sort()
    return {
        "rate": rate,
        "achieved_qps": len(lat) / wall,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_share_with_pacing": cpu / wall,
        "pacing_cpu_share": harness_cpu / harness_wall,
        "cpu_share": max(0.0, cpu / wall - harness_cpu / harness_wall),
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p95_ms": percentile(lat, 0.95) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": lat[-1] * 1000 if lat else 0.0,
        "errors": errors,
        # the latency CDF for bench/report.py's chart: [quantile, ms] at 0.1% steps up to 99.9%, then the max
        "cdf": [[q / 1000, percentile(lat, q / 1000) * 1000] for q in range(1, 1000)]
        + [[1.0, lat[-1] * 1000 if lat else 0.0]],
    }


def run_measure(peer: Peer, argv: list[str], code: Optional[str], timeout: float) -> dict[str, Any]:
    cpu0, t0 = peer.cpu_seconds(), time.perf_counter()
    res = run_child([__file__, *argv, *(["--code", code] if code else [])], timeout=timeout, env=code_env(code))
    wall = time.perf_counter() - t0
    res["peer_cpu_s"] = peer.cpu_seconds() - cpu0
    res["peer_cpu_share"] = res["peer_cpu_s"] / wall
    return res


def verdict(key: str, value: float) -> str:
    _label, op, target = TARGETS[key]
    ok = value < target if op == "<" else value > target
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="load and paced windows")
    ap.add_argument("--connects", type=int, default=50, help="connects per transport")
    ap.add_argument("--rate", type=float, default=12_000.0, help="paced request rate")
    ap.add_argument("--paced-concurrency", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="2 s windows and 20 connects")
    ap.add_argument("--code", help="a tree to import nexus_green from")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "seed_targets.json")
    ap.add_argument("--child", choices=["connect", "load", "paced"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--ca-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        check_code_origin(args.code)
        if args.child == "connect":
            res = child_connect(args.url, args.connects, args.ca_file)
        elif args.child == "load":
            res = child_load(args.url, args.seconds)
        else:
            res = child_paced(args.url, args.seconds, args.rate, args.paced_concurrency)
        print(json.dumps(res))
        return 0

    if args.quick:
        args.seconds, args.connects = min(args.seconds, 2.0), min(args.connects, 20)
    from nexus_green.testing.tls import make_test_certificates

    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    print(
        f"about {3 + 2.5 * args.seconds:.0f} s: connects, "
        f"{args.seconds * 1.5:.0f} s of load, {args.seconds:.0f} s paced at {args.rate:,.0f} QPS",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, make_test_certificates(tmp) as kit:
        tls_peer = start_tls_peer(kit.server_cert_file, kit.server_key_file)
        try:
            n = ["--connects", str(args.connects)]
            results["connect_tcp"] = run_measure(peer, ["--child", "connect", "--url", peer.url, *n], args.code, 300)
            print(f"  connect tcp: {results['connect_tcp']}", flush=True)
            tls_url = f"tls://127.0.0.1:{tls_peer.port}"
            argv = ["--child", "connect", "--url", tls_url, "--ca-file", kit.ca_file, *n]
            results["connect_tls"] = run_measure(tls_peer, argv, args.code, 300)
            print(f"  connect tls: {results['connect_tls']}", flush=True)
        finally:
            tls_peer.stop()
    secs = ["--seconds", str(args.seconds)]
    results["load"] = run_measure(
        peer, ["--child", "load", "--url", peer.url, *secs], args.code, 60 + 10 * args.seconds
    )
    print(f"  load: {results['load']}", flush=True)
    argv = ["--child", "paced", "--url", peer.url, *secs, "--rate", str(args.rate)]
    argv += ["--paced-concurrency", str(args.paced_concurrency)]
    results["paced"] = run_measure(peer, argv, args.code, 60 + 10 * args.seconds)
    print(f"  paced: { {k: v for k, v in results['paced'].items() if k != 'cdf'} }", flush=True)
    stats = peer.stop()

    values = {
        "connect_tcp_ms": results["connect_tcp"]["median_ms"],
        "connect_tls_ms": results["connect_tls"]["median_ms"],
        "qps": results["load"]["qps"],
        "rss_mb": results["load"]["rss_mb"],
        "cpu_share": results["paced"]["cpu_share"],
        "p95_ms": results["paced"]["p95_ms"],
    }
    extra = {
        "connect_tcp_ms": f"p95 {results['connect_tcp']['p95_ms']:.2f} ms, cold {results['connect_tcp']['cold_ms']:.1f} ms",
        "connect_tls_ms": f"p95 {results['connect_tls']['p95_ms']:.2f} ms, cold {results['connect_tls']['cold_ms']:.1f} ms",
        "qps": f"c=500: {results['load']['qps_c500']:,.0f}; peer CPU {results['load']['peer_cpu_share']:.0%}",
        "rss_mb": f"base {results['load']['rss_base_mb']:.1f} MB, peak {results['load']['rss_peak_mb']:.1f} MB",
        "cpu_share": (
            f"achieved {results['paced']['achieved_qps']:,.0f} QPS; the pacing loop alone "
            f"{results['paced']['pacing_cpu_share']:.0%} (subtracted; {results['paced']['cpu_share_with_pacing']:.0%} with it); "
            f"peer CPU {results['paced']['peer_cpu_share']:.0%}"
        ),
        "p95_ms": f"p50 {results['paced']['p50_ms']:.2f} ms, p99 {results['paced']['p99_ms']:.2f} ms",
    }
    print(f"\nSeed targets (Swift NexusKit plan) on this machine, {peer.describe().split(' on port')[0]}\n")
    print(f"{'target':42} {'Swift plan':>12} {'nexus_green':>12}  {'':7} notes")
    for key, (label, op, target) in TARGETS.items():
        v = values[key]
        if key == "cpu_share":
            shown, tgt = f"{v:.0%}", f"{op} {target:.0%}"
        elif key == "qps":
            shown, tgt = f"{v:,.0f}", f"{op} {target:,.0f}"
        else:
            shown, tgt = f"{v:.2f}", f"{op} {target:g}"
        print(f"{label:42} {tgt:>12} {shown:>12}  {verdict(key, v):7} {extra[key]}")
    if stats:
        print(f"\npeer {stats}")
    RESULTS.mkdir(exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "targets": {k: {"label": lbl, "op": op, "target": t} for k, (lbl, op, t) in TARGETS.items()},
                "values": values,
                "verdicts": {k: verdict(k, v) for k, v in values.items()},
                "details": results,
                "peer": peer.describe().split(" on port")[0],
                "peer_stats": stats,
                "seconds": args.seconds,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
