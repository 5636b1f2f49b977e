"""Fail when any module of nexus_green has less than --min % branch coverage.

Run by ``make test`` after the suite, on the combined .coverage data. Files
that no test imported count as 0%, because coverage's ``source`` setting makes
the JSON report list them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min", type=float, default=90.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cov.json"
        subprocess.run([sys.executable, "-m", "coverage", "json", "-q", "-o", str(out)], check=True)
        report = json.loads(out.read_text())
    low = []
    for path, info in sorted(report["files"].items()):
        summary = info["summary"]
        if summary["num_statements"] == 0:
            continue
        pct = summary["percent_covered"]
        if pct < args.min:
            low.append((pct, path))
    for pct, path in low:
        print(f"coverage gate: {path} has {pct:.1f}% statement+branch coverage (< {args.min}%)")
    if low:
        return 1
    print(f"coverage gate: all {len(report['files'])} modules have at least {args.min}% statement+branch coverage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
