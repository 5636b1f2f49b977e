"""Compression: ratio and MB/s per algorithm and level on realistic JSON, and what adaptive saves.

Payloads are deterministic, realistic JSON (user/order records with names,
e-mails, timestamps, nested addresses, floats): ``small`` (~600 B), ``30KB``
and ``1MB``.

1. Per algorithm x level x payload: ratio (compressed/original), compress and
   decompress MB/s (best of a few timed runs).
2. Adaptive ``CompressionMiddleware`` (defaults) on a mixed workload: bytes on
   the wire versus no compression (target: at least 40% fewer).
3. The 30 KB case, cost per message: the middleware's own CPU time per message
   (compress + the receiver's decompress) against the time the bytes take on an
   assumed link; throughput change = t(none) / t(adaptive) - 1 per link. This is
   a model, not an end-to-end figure: the lead measures the Client end to end.

Run: .venv/bin/python bench/bench_compression.py [--quick]
Writes bench/results/compression.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from nexus_green.middleware import CompressionAnalyzer, CompressionMiddleware
from nexus_green.protocol.compression import CODECS, decompress_body
from nexus_green.protocol.messages import Request, Response

FIRST = ["ann", "bob", "chen", "dana", "eve", "farid", "gus", "hana", "ivan", "jo", "kai", "li", "mia", "noor"]
LAST = ["smith", "garcia", "wang", "müller", "rossi", "kim", "ivanova", "dubois", "tanaka", "silva"]
CITIES = ["Berlin", "Lyon", "Osaka", "Austin", "Porto", "Leeds", "Pune", "Quito", "Turin", "Cork"]
STATUS = ["pending", "paid", "shipped", "delivered", "refunded"]


def record(rng: random.Random, i: int) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {
        "id": 100_000 + i,
        "uuid": f"{rng.getrandbits(128):032x}",
        "name": f"{first.title()} {last.title()}",
        "email": f"{first}.{last}{rng.randint(1, 999)}@example.com",
        "created_at": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
        "address": {
            "city": rng.choice(CITIES),
            "zip": f"{rng.randint(10000, 99999)}",
            "street": f"{rng.randint(1, 300)} {rng.choice(LAST).title()} St",
        },
        "orders": [
            {
                "sku": f"SKU-{rng.randint(1000, 9999)}",
                "qty": rng.randint(1, 5),
                "price": round(rng.uniform(1, 500), 2),
                "status": rng.choice(STATUS),
            }
            for _ in range(rng.randint(0, 3))
        ],
        "score": round(rng.random(), 4),
        "active": rng.random() < 0.8,
    }


def payload(target: int, seed: int) -> bytes:
    rng = random.Random(seed)
    items, size, i = [], 2, 0
    while True:
        r = json.dumps(record(rng, i)).encode()
        if items and size + len(r) + 1 > target:
            break
        items.append(r)
        size += len(r) + 1
        i += 1
    return b"[" + b",".join(items) + b"]"


def timed(fn, min_time: float) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    total = 0.0
    runs = 0
    while total < min_time or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
        runs += 1
        if runs >= 3 and total > 3 * min_time:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = ap.parse_args()
    min_time = 0.02 if args.quick else 0.1
    payloads = {"small": payload(600, 1), "30KB": payload(30_000, 2), "1MB": payload(1_000_000, 3)}
    result: dict = {
        "payload_bytes": {k: len(v) for k, v in payloads.items()},
        "codecs": [],
        "adaptive": {},
        "cost_30KB": {},
    }

    # 1. every algorithm and level
    print(f"{'payload':<7} {'algorithm':<7} {'level':<9} {'ratio':>6} {'comp MB/s':>10} {'decomp MB/s':>12}")
    for pname, data in payloads.items():
        for cname, codec in CODECS.items():
            for level in ("fastest", "balanced", "best"):
                blob = codec.compress(data, level)
                tc = timed(lambda: codec.compress(data, level), min_time)  # noqa: B023
                td = timed(lambda: codec.decompress(blob), min_time)  # noqa: B023
                row = {
                    "payload": pname,
                    "algorithm": cname,
                    "level": level,
                    "ratio": len(blob) / len(data),
                    "compress_mb_s": len(data) / tc / 1e6,
                    "decompress_mb_s": len(data) / td / 1e6,
                }
                result["codecs"].append(row)
                print(
                    f"{pname:<7} {cname:<7} {level:<9} {row['ratio']:>6.3f} {row['compress_mb_s']:>10.1f} {row['decompress_mb_s']:>12.1f}"
                )

    # 2. adaptive middleware on a mixed workload, bytes on the wire vs none
    mix = [("small", 300), ("30KB", 300), ("1MB", 10)]
    mw = CompressionMiddleware()
    wire_bytes: dict = {}

    def make_wire(name: str):  # type: ignore[no-untyped-def]
        def wire(request: Request) -> Response:
            wire_bytes[name] = wire_bytes.get(name, 0) + len(request.body)
            return Response()

        return wire

    plain_total = 0
    for name, count in mix:
        for _ in range(count):
            mw(Request(body=payloads[name]), make_wire(name))
        plain_total += len(payloads[name]) * count
    wire_total = sum(wire_bytes.values())
    per_class = {name: 1 - wire_bytes[name] / (len(payloads[name]) * count) for name, count in mix}
    result["adaptive"] = {
        "mix": dict(mix),
        "bytes_plain": plain_total,
        "bytes_on_wire": wire_total,
        "saved": 1 - wire_total / plain_total,
        "saved_per_payload": per_class,
        "analyzer_choice": mw.analyzer.current if mw.analyzer else None,
        "analyzer_switches": mw.analyzer.switches if mw.analyzer else 0,
    }
    print()
    print(
        f"adaptive on {mix}: {plain_total} bytes -> {wire_total} on the wire, saved {result['adaptive']['saved']:.1%} (target >= 40%)"
    )
    print("  saved per payload: " + ", ".join(f"{k} {v:.1%}" for k, v in per_class.items()))
    print(
        f"  analyzer settled on {result['adaptive']['analyzer_choice']} ({result['adaptive']['analyzer_switches']} switches)"
    )

    # 3. the 30 KB case: CPU per message vs link time, the analyzer told the link's bandwidth
    data = payloads["30KB"]
    n = 300 if args.quick else 2000
    links = {"100Mbit": 12.5e6, "1Gbit": 125e6, "10Gbit": 1.25e9}
    cost: dict = {"message_bytes": len(data), "messages": n, "links": {}}
    print()
    print(f"30 KB message ({len(data)} bytes), adaptive middleware with CompressionAnalyzer(bandwidth=link):")
    print(
        f"{'link':<8} {'choice':<7} {'wire B':>7} {'cpu us':>7} {'recv us':>8} {'t none us':>10} {'t adapt us':>11} {'throughput':>11}"
    )
    for lname, bw in links.items():
        sent: list = []

        def sink(request: Request, sent: list = sent) -> Response:
            sent.append(request)
            return Response()

        mw_link = CompressionMiddleware(analyzer=CompressionAnalyzer(bandwidth=bw))
        for _ in range(50):  # the analyzer's first probes
            mw_link(Request(body=data), sink)
        sent.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            sink(Request(body=data))  # the same loop without the middleware: subtracted below
        base = (time.perf_counter() - t0) / n
        sent.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            mw_link(Request(body=data), sink)
        cpu = max(0.0, (time.perf_counter() - t0) / n - base)
        t0 = time.perf_counter()
        for r in sent:
            decompress_body(r.context.get("tp", 0), r.body)
        recv = (time.perf_counter() - t0) / n
        wire_size = sum(len(r.body) for r in sent) / n
        t_none = len(data) / bw
        t_adapt = cpu + recv + wire_size / bw
        change = t_none / t_adapt - 1
        choice = mw_link.analyzer.current if mw_link.analyzer else "?"
        cost["links"][lname] = {
            "bandwidth_bytes_s": bw,
            "choice": choice,
            "wire_bytes": wire_size,
            "cpu_compress_us": cpu * 1e6,
            "cpu_receiver_decompress_us": recv * 1e6,
            "t_none_us": t_none * 1e6,
            "t_adaptive_us": t_adapt * 1e6,
            "throughput_change": change,
        }
        print(
            f"{lname:<8} {choice:<7} {wire_size:>7.0f} {cpu * 1e6:>7.1f} {recv * 1e6:>8.1f} {t_none * 1e6:>10.1f}"
            f" {t_adapt * 1e6:>11.1f} {change:>+10.1%}"
        )
    print("(model, per message, serial: middleware CPU (loop minus the same loop without it) + receiver")
    print(" decompress + bytes over the link, vs the bytes alone; the end-to-end Client figure is the lead's)")
    result["cost_30KB"] = cost
    out = Path(__file__).resolve().parent / "results" / "compression.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
