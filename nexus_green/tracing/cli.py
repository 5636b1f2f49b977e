"""``nexus-green trace view FILE``: an HTML waterfall (or ``--chrome`` trace-event JSON) of an OTLP/JSON file.

Example::

    >>> import argparse
    >>> ap = argparse.ArgumentParser(prog="nexus-green")
    >>> add_commands(ap.add_subparsers(dest="command"))
    >>> args = ap.parse_args(["trace", "view", "spans.jsonl", "--chrome"])
    >>> args.file, args.chrome, args.output
    ('spans.jsonl', True, None)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .viewer import TraceFileError, load_otlp, render_chrome, render_html

__all__ = ["add_commands"]


def _view(args: argparse.Namespace) -> int:
    try:
        spans = load_otlp(args.file)
    except (OSError, TraceFileError) as exc:
        print(f"nexus-green trace view: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.chrome:
        out = args.output or args.file + ".trace.json"
        text = json.dumps(render_chrome(spans))
    else:
        out = args.output or args.file + ".html"
        text = render_html(spans, title=f"nexus_green trace: {os.path.basename(args.file)}")
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        print(f"nexus-green trace view: cannot write {out}: {exc}", file=sys.stderr)
        return 2
    traces = len({s["trace_id"] for s in spans})
    print(f"{out}: {len(spans)} spans in {traces} trace{'' if traces == 1 else 's'}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``trace view`` to the ``nexus-green`` subcommands (``sub`` is argparse's subparsers object)."""
    t = sub.add_parser("trace", help="tracing tools (docs/tracing.md)")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    v = tsub.add_parser("view", help="draw the traces of an OTLP/JSON file as an HTML waterfall")
    v.add_argument("file", help="OTLP/JSON file (JSON lines, as FileSink writes)")
    v.add_argument("--chrome", action="store_true", help="write Chrome trace-event JSON (Perfetto) instead")
    v.add_argument("-o", "--output", default=None, help="output file (default FILE.html or FILE.trace.json)")
    v.set_defaults(fn=_view)
