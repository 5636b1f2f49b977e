"""Run every benchmark in bench/ one after another (``make bench``).

Each prints its own table and writes bench/results/<name>.json. A failing
benchmark is reported and the rest still run; the exit status is non-zero if
any failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_foundation.py", "--seconds", "5"],
    ["bench_resilience.py"],
    ["bench_cache.py"],
    ["bench_compression.py"],
    ["bench_compression_e2e.py", "--seconds", "3"],
    ["bench_pipeline.py", "--seconds", "3", "--rounds", "3"],
    ["bench_monitoring_memory.py"],
    ["bench_monitoring_overhead.py", "--seconds", "30", "--rounds", "3"],
    ["bench_ratelimit.py"],
    ["bench_memory_inflight.py", "--seconds", "30", "--timeout", "300"],
    ["request_path_observations.py"],
    # issue 14 (performance): the matrix at its defaults (16 cells x 5 contenders x 3 rounds) takes 5-6 minutes
    ["bench_matrix.py"],
    ["bench_seed_targets.py"],
    ["bench_idle_memory.py"],
    ["bench_copies.py"],
    ["bench_full_stack.py"],
    ["bench_dashboard_push.py", "--rounds", "10"],
]


def main() -> int:
    failed = []
    for argv in BENCHES:
        print(f"\n=== {' '.join(argv)} ===", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]], cwd=HERE.parent)
        if rc:
            failed.append(argv[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(BENCHES)} benchmarks ran; results in bench/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
