"""Rate limiter cost per allowed call: policies, RateLimiter, RateLimitMiddleware and @rate_limited.

In-process microbenchmark, no network. Every limit is huge (capacity and rate
1e12), so every call is admitted: this measures the allow path only, on the
real clock (``SYSTEM_CLOCK``, one ``time.monotonic()`` per decision).

Side by side in one run: ``--baseline REV`` also loads
``nexus_green/middleware/ratelimit.py`` as it was at git revision ``REV``
(``git show REV:...``, imported next to the current one) and measures the same
cases on it, so the table shows before and after from one process.

Each case runs ``--calls`` calls, best of ``--rounds`` rounds (the least
disturbed round on a shared machine). Figures are nanoseconds per call,
including the loop and one Python call; the ``floor`` row is that loop with a
no-op function, for reference.

Run: ``python bench/bench_ratelimit.py [--calls 200000] [--rounds 7] [--baseline REV]``.
Writes bench/results/ratelimit.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RESULTS = HERE / "results"
BIG = 1e12


def load_baseline(rev: str) -> ModuleType:
    """ratelimit.py at ``rev``, imported as nexus_green.middleware._ratelimit_baseline."""
    source = subprocess.check_output(["git", "show", f"{rev}:nexus_green/middleware/ratelimit.py"], cwd=ROOT, text=True)
    import nexus_green.middleware  # noqa: F401  (the package its relative imports need)

    name = "nexus_green.middleware._ratelimit_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "nexus_green.middleware"
    sys.modules[name] = module
    exec(compile(source, f"<ratelimit.py at {rev}>", "exec"), module.__dict__)
    return module


def cases(rl: ModuleType) -> dict[str, Callable[[int], None]]:
    """name -> run(n): n allowed calls of that case."""
    from nexus_green.protocol.messages import Request, Response

    reply = Response()

    def terminal(request: Any) -> Any:
        return reply

    def policy_decision(n: int) -> None:
        acquire = rl.TokenBucket(BIG, BIG).acquire
        for _ in range(n):
            acquire()

    def policy_fast(n: int) -> None:
        b = rl.TokenBucket(BIG, BIG)
        try_acquire = getattr(b, "try_acquire", None)
        if try_acquire is None:  # the baseline has no fast path: its only way is the decision
            acquire = b.acquire
            for _ in range(n):
                acquire().allowed  # noqa: B018
            return
        for _ in range(n):
            try_acquire()

    def limiter(policy: Callable[[], Any], key: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            acquire = rl.RateLimiter(policy()).acquire
            for _ in range(n):
                acquire(key)

        return run

    def limiter_rotating(n: int) -> None:
        acquire = rl.RateLimiter(rl.TokenBucket(BIG, BIG)).acquire
        keys = list(range(100)) * (n // 100 + 1)
        for i in range(n):
            acquire(keys[i])

    def middleware(n: int) -> None:
        mw = rl.RateLimitMiddleware(rl.RateLimiter(rl.TokenBucket(BIG, BIG)), per="fid")
        call = mw.__call__
        request = Request(fid=1)
        for _ in range(n):
            call(request, terminal)

    def decorator(n: int) -> None:
        @rl.rate_limited(rl.TokenBucket(BIG, BIG), key=lambda user: user)
        def fetch(user: str) -> str:
            return user

        for _ in range(n):
            fetch("ann")

    return {
        "TokenBucket: decision object (acquire)": policy_decision,
        "TokenBucket: allow check (try_acquire)": policy_fast,
        "RateLimiter, token bucket, key None": limiter(lambda: rl.TokenBucket(BIG, BIG), None),
        "RateLimiter, token bucket, one key": limiter(lambda: rl.TokenBucket(BIG, BIG), 1),
        "RateLimiter, leaky bucket, one key": limiter(lambda: rl.LeakyBucket(BIG, BIG), 1),
        "RateLimiter, sliding window, one key": limiter(lambda: rl.SlidingWindow(BIG, 60.0), 1),
        "RateLimiter, token bucket, 100 keys in turn": limiter_rotating,
        "RateLimitMiddleware per fid, one fid": middleware,
        "@rate_limited, one key": decorator,
    }


def floor(n: int) -> None:
    def noop(key: Any) -> None:
        return None

    for _ in range(n):
        noop(1)


def measure(run: Callable[[int], None], calls: int, rounds: int) -> float:
    """Best ns per call over ``rounds`` rounds."""
    best = float("inf")
    run(1000)  # warm up
    for _ in range(rounds):
        t0 = time.perf_counter()
        run(calls)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", help="git revision whose ratelimit.py is measured side by side")
    args = ap.parse_args()

    from nexus_green.middleware import ratelimit as current

    modules = {"now": current}
    if args.baseline:
        modules = {"before": load_baseline(args.baseline), **modules}
    table: dict[str, dict[str, float]] = {"floor (loop + no-op call)": {}}
    for label in modules:
        table["floor (loop + no-op call)"][label] = measure(floor, args.calls, args.rounds)
    for label, module in modules.items():
        for name, run in cases(module).items():
            table.setdefault(name, {})[label] = measure(run, args.calls, args.rounds)

    cols = list(modules)
    print(f"\nRate limiter, allowed calls, ns per call (best of {args.rounds} x {args.calls:,} calls)")
    if args.baseline:
        print(f"before = ratelimit.py at {args.baseline}; now = the working tree")
    header = f"{'case':46}" + "".join(f" {c:>9}" for c in cols) + ("   speed-up" if len(cols) == 2 else "")
    print(header)
    for name, row in table.items():
        line = f"{name:46}" + "".join(f" {row[c]:>9,.0f}" for c in cols)
        if len(cols) == 2:
            line += f"   {row['before'] / row['now']:>7.2f}x"
        print(line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ratelimit.json").write_text(
        json.dumps(
            {"calls": args.calls, "rounds": args.rounds, "baseline": args.baseline, "ns_per_call": table}, indent=2
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
