"""Connect time (plain TCP, TLS, through SOCKS5) and pool warm-up, side by side in one run (issue 15).

Each peer runs in its own process: the C epoll echo peer (bench/peers.py; the
embedded Python peer without a C compiler), an EmbeddedServer with TLS
(certificates from nexus_green.testing's TLS kit) and nexus_green.testing's
Socks5Proxy (no authentication) in front of the echo peer. This process
measures, in turns (plain, TLS, SOCKS5, SOCKS5 + TLS, then again), ``--connects``
times each:

    connect    ``Client(url, heartbeat_interval=None).connect(timeout=10)`` on a new
               Client, then one request (the link works end to end), then close()

The first connect of each kind (lazy imports, the SSL context) is shown apart
as "cold". Then pool warm-up: ``Client(url, min_size=N, max_size=N)``, the time
from ``connect()`` until the pool holds N connections (the pool opens the
others in the background), for N in ``--pool-sizes``.

Run: ``python bench/bench_connect.py [--connects 50] [--pool-sizes 4,16,64] [--quick]``.
Writes bench/results/connect.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, percentile
from peers import Peer, _started, start_peer, start_tls_peer

KINDS = ("tcp", "tls", "socks5", "socks5+tls")


def serve_proxy() -> int:
    """Child: a Socks5Proxy on loopback until SIGINT/SIGTERM (prints ``listening on HOST:PORT``)."""
    import gevent
    import gevent.event

    from nexus_green.testing.socks5_proxy import Socks5Proxy

    proxy = Socks5Proxy()
    proxy.start()
    print(f"listening on {proxy.address[0]}:{proxy.address[1]}", flush=True)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    stop.wait()
    proxy.stop()
    return 0


def one_connect(url: str, options: dict[str, Any]) -> float:
    from nexus_green import Client

    t0 = time.perf_counter()
    client = Client(url, heartbeat_interval=None, **options)
    client.connect(timeout=10)
    took = time.perf_counter() - t0
    try:
        client.request(b"ping", fid=1, timeout=5)
    finally:
        client.close()
    return took


def summary(times: list[float]) -> dict[str, Any]:
    warm = sorted(times[1:])
    return {
        "cold_ms": times[0] * 1000,
        "median_ms": percentile(warm, 0.5) * 1000,
        "p95_ms": percentile(warm, 0.95) * 1000,
        "max_ms": warm[-1] * 1000 if warm else 0.0,
        "connects": len(warm),
    }


def pool_warmup(url: str, n: int) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    t0 = time.perf_counter()
    client = Client(url, min_size=n, max_size=n, heartbeat_interval=None)
    try:
        client.connect(timeout=10)
        first = time.perf_counter() - t0
        deadline = t0 + 30
        while client.stats()["size"] < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the pool opened {client.stats()['size']} of {n} connections in 30 s")
            gevent.sleep(0.001)
        full = time.perf_counter() - t0
    finally:
        client.close()
    return {"size": n, "first_ms": first * 1000, "full_ms": full * 1000, "per_conn_ms": full * 1000 / n}


def measure(connects: int, pool_sizes: list[int], peer: Peer, tls: Peer, proxy: Peer, ca_file: str) -> dict[str, Any]:
    from nexus_green import TLSConfig

    proxy_url = f"socks5://127.0.0.1:{proxy.port}"
    targets: dict[str, tuple[str, dict[str, Any]]] = {
        "tcp": (peer.url, {}),
        "tls": (f"tls://127.0.0.1:{tls.port}", {"tls": TLSConfig(ca_file=ca_file)}),
        "socks5": (peer.url, {"proxy": proxy_url}),
        "socks5+tls": (f"tls://127.0.0.1:{tls.port}", {"tls": TLSConfig(ca_file=ca_file), "proxy": proxy_url}),
    }
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(connects + 1):  # in turns: the machine's noise hits every kind alike
        for kind in KINDS:
            url, options = targets[kind]
            times[kind].append(one_connect(url, options))
    out: dict[str, Any] = {kind: summary(t) for kind, t in times.items()}
    out["pool_warmup"] = [pool_warmup(peer.url, n) for n in pool_sizes]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connects", type=int, default=50, help="connects per kind (after one cold connect)")
    ap.add_argument("--pool-sizes", default="4,16,64", help="comma-separated pool sizes to warm up")
    ap.add_argument("--quick", action="store_true", help="10 connects, pools of 4 and 16")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "connect.json")
    ap.add_argument("--serve-proxy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_proxy:
        return serve_proxy()
    if args.quick:
        args.connects, args.pool_sizes = min(args.connects, 10), "4,16"
    pool_sizes = [int(x) for x in args.pool_sizes.split(",") if x.strip()]
    from nexus_green.testing.tls import make_test_certificates

    t0 = time.perf_counter()
    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    print(f"about {2 + args.connects * 0.04:.0f} s: {args.connects} connects x {len(KINDS)} kinds, pools {pool_sizes}")
    try:
        with tempfile.TemporaryDirectory() as tmp, make_test_certificates(tmp) as kit:
            tls = start_tls_peer(kit.server_cert_file, kit.server_key_file)
            proxy = _started([sys.executable, __file__, "--serve-proxy"], "socks5")
            try:
                res = measure(args.connects, pool_sizes, peer, tls, proxy, kit.ca_file)
            finally:
                tls.stop()
                proxy.stop()
    finally:
        peer.stop()
    res["peer"] = peer.describe().split(" on port")[0]
    res["elapsed_s"] = time.perf_counter() - t0
    print(f"\n{'kind':12} {'median ms':>10} {'p95 ms':>8} {'cold ms':>8}")
    for kind in KINDS:
        r = res[kind]
        print(f"{kind:12} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['cold_ms']:>8.1f}")
    for p in res["pool_warmup"]:
        print(f"pool of {p['size']:>3}: first connection {p['first_ms']:.2f} ms, all {p['full_ms']:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
