"""Monitoring overhead: the Foundation Client workload with monitoring off and on, same run.

Variants, each in its own process against the same bench/echo_peer.py:

    off        Client, no monitor
    on-1.0     PerformanceMonitor started with sample_rate=1.0 (every latency recorded)
    on-default PerformanceMonitor started with the default configuration

Targets (issue 4): throughput at most 3% lower at sample rate 1.0 and at most
1% lower at the default sample rate. Rounds alternate the variants so drift
on a shared machine hits all of them alike; the best round of each is kept.

Run: ``python bench/bench_monitoring_overhead.py [--seconds 4] [--rounds 3]``.
Writes bench/results/monitoring_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_foundation as bf  # noqa: E402

VARIANTS = ("off", "on-1.0", "on-default")


def child(variant: str, port: int, seconds: float) -> None:
    monitor = None
    if variant != "off":
        from nexus_green.monitoring import MonitoringConfiguration, PerformanceMonitor

        cfg = MonitoringConfiguration(sample_rate=1.0) if variant == "on-1.0" else MonitoringConfiguration()
        monitor = PerformanceMonitor(config=cfg).start()
    cpu0 = time.process_time()
    res = bf.run_client(port, seconds, True)
    res["cpu_us_per_req"] = (time.process_time() - cpu0) / max(1, res["requests"]) * 1e6
    if monitor is not None:
        monitor.tick()
        res["monitor_requests"] = monitor.value("requests.completed")
        res["monitor_p50_ms"] = monitor.value("request.latency", field="p50") * 1000
        monitor.close()
    lat = res.pop("latencies")
    res.update(
        rps=res["requests"] / res["elapsed"], p50=bf.percentile(lat, 0.5) * 1000, p95=bf.percentile(lat, 0.95) * 1000
    )
    print(json.dumps(res))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.port, args.seconds)
        return 0
    runs = bf.run_rounds(__file__, list(VARIANTS), args.seconds, args.rounds)
    best = {v: max(r, key=lambda x: x["rps"]) for v, r in runs.items()}
    print(
        f"\nMonitoring overhead: Client workload, 50 greenlets, {args.seconds:.0f}s x {args.rounds} rounds (best kept)\n"
    )
    print(
        f"{'variant':12} {'req/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'vs off':>8} {'CPU us/req':>11} {'vs off':>8} {'peer CPU':>9}"
    )
    base = best["off"]["rps"]
    cpu = {v: min(r["cpu_us_per_req"] for r in rs) for v, rs in runs.items()}
    for v, r in best.items():
        print(
            f"{v:12} {r['rps']:>10,.0f} {r['p50']:>8.3f} {r['p95']:>8.3f} {r['rps'] / base - 1:>+8.1%}"
            f" {cpu[v]:>11.2f} {cpu[v] / cpu['off'] - 1:>+8.1%} {r['server_cpu']:>8.0%}"
        )
    for v in ("on-1.0", "on-default"):
        r = best[v]
        print(
            f"{v}: monitor counted {r['monitor_requests']:,} of {r['requests']:,} requests, p50 {r['monitor_p50_ms']:.3f} ms"
        )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "monitoring_overhead.json").write_text(
        json.dumps(
            {
                "runs": runs,
                "throughput_cost_1_0": 1 - best["on-1.0"]["rps"] / base,
                "throughput_cost_default": 1 - best["on-default"]["rps"] / base,
                "cpu_cost_1_0": cpu["on-1.0"] / cpu["off"] - 1,
                "cpu_cost_default": cpu["on-default"] / cpu["off"] - 1,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
