"""``nexus-green diagnose HOST:PORT``: run every check and print the report.

``nexus-green diagnose HOST:PORT [--tls] [--proxy URL] [--count N] [--json | --markdown] [--output FILE]``,
plus ``--echo-fid N`` (bandwidth, client-mode load, memory), ``--interval S``
(between heartbeats), ``--timeout S`` (each network step), ``--budget S``
(the whole run), ``--cafile``, ``--server-hostname``, ``--client-cert``,
``--client-key``, ``--pin`` (TLS), ``--load-count``, ``--concurrency``,
``--load-duration`` (the throughput test) and ``--skip NAME`` (repeatable).

It prints a readable summary (or the JSON / Markdown report) on stdout;
with ``--output FILE`` the report (JSON, Markdown, or the summary) goes to
the file and the summary to stdout. A progress line is drawn on stderr when
it is a terminal. Exit status: 2 when the verdict is unhealthy, 0 otherwise
(argparse's 2 for a malformed command line, with a message saying what is
wrong). An unreachable host, a refused port, a bad certificate or a peer
that speaks another protocol is a report, never a traceback.

Example::

    >>> import argparse
    >>> ap = argparse.ArgumentParser(prog="nexus-green")
    >>> add_commands(ap.add_subparsers(dest="command", required=True))
    >>> args = ap.parse_args(["diagnose", "127.0.0.1:7600", "--count", "5", "--json"])
    >>> args.target, args.count, args.format
    (('127.0.0.1', 7600), 5, 'json')
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from .runner import CHECK_NAMES, diagnose
from .target import parse_hostport

__all__ = ["add_commands", "progress_line"]


def _hostport(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _proxy(text: str) -> str:
    from ..errors import NexusError
    from ..transport.socks5 import parse_proxy_url

    try:
        parse_proxy_url(text)
    except NexusError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def progress_line(stream: TextIO) -> Any:
    """A progress callback that redraws one line on ``stream`` (a terminal): ``[3/11] tcp ...``.

    Example::

        >>> import io
        >>> out = io.StringIO()
        >>> p = progress_line(out); p("dns", 1, 4); p("done", 4, 4)
        >>> out.getvalue()
        '\\r\\x1b[K[2/4] dns ...\\r\\x1b[K'
    """

    def show(name: str, index: int, total: int) -> None:
        if name == "done":
            stream.write("\r\x1b[K")
        else:
            stream.write(f"\r\x1b[K[{index + 1}/{total}] {name} ...")
        stream.flush()

    return show


def _diagnose(args: argparse.Namespace) -> int:
    host, port = args.target
    progress = progress_line(sys.stderr) if sys.stderr.isatty() else None
    report = diagnose(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        tls=args.tls,
        proxy=args.proxy,
        server_hostname=args.server_hostname,
        cafile=args.cafile,
        client_cert=args.client_cert,
        client_key=args.client_key,
        pins=tuple(args.pin),
        count=args.count,
        interval=args.interval,
        echo_fid=args.echo_fid,
        timeout=args.timeout,
        budget=args.budget,
        load_count=args.load_count,
        concurrency=args.concurrency,
        load_duration=args.load_duration,
        progress=progress,
        skip=tuple(args.skip),
    )
    rendered = {"json": report.to_json, "markdown": report.to_markdown, "text": report.to_text}[args.format]()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(rendered if rendered.endswith("\n") else rendered + "\n")
        sys.stdout.write(report.to_text())
        sys.stdout.write(f"report written to {args.output}\n")
    else:
        sys.stdout.write(rendered if rendered.endswith("\n") else rendered + "\n")
    sys.stdout.flush()
    return report.exit_code


def add_commands(sub: Any) -> None:
    """Add ``diagnose`` to the ``nexus-green`` subcommands ``sub``."""
    d = sub.add_parser(
        "diagnose",
        help="diagnose an endpoint: DNS, TCP, TLS, protocol, latency, bandwidth, load (docs/diagnostics.md)",
        description="Run every diagnostic check against HOST:PORT and report what is wrong and what to do. "
        "Exit status 2 when the verdict is unhealthy.",
    )
    d.add_argument("target", type=_hostport, metavar="HOST:PORT", help="the endpoint ([v6]:PORT for IPv6)")
    d.add_argument("--tls", action="store_true", help="the endpoint speaks TLS: check its certificate too")
    d.add_argument("--proxy", type=_proxy, default=None, metavar="URL", help="a socks5:// or socks5h:// proxy")
    d.add_argument("--count", type=_positive(int), default=20, metavar="N", help="heartbeats in the latency burst")
    d.add_argument("--interval", type=_non_negative, default=0.05, help="seconds between heartbeats (0.05)")
    d.add_argument("--echo-fid", type=int, default=None, metavar="FID", help="an echo function, for bandwidth and load")
    d.add_argument("--timeout", type=_positive(float), default=5.0, help="seconds for each network step (5)")
    d.add_argument("--budget", type=_positive(float), default=120.0, help="seconds for the whole run (120)")
    d.add_argument(
        "--load-count", type=_positive(int), default=2000, metavar="N", help="requests in the load test (2000)"
    )
    d.add_argument("--concurrency", type=_positive(int), default=8, help="greenlets in the load test (8)")
    d.add_argument("--load-duration", type=_positive(float), default=10.0, help="time limit of the load test (10)")
    d.add_argument("--cafile", type=_file, default=None, help="PEM file of the CAs to trust (default: the system's)")
    d.add_argument("--server-hostname", default=None, help="the name the certificate must carry (default: HOST)")
    d.add_argument("--client-cert", type=_file, default=None, help="a client certificate (PEM) to present")
    d.add_argument("--client-key", type=_file, default=None, help="its key (PEM)")
    d.add_argument("--pin", action="append", default=[], help="an accepted pin, sha256/<base64 SPKI> (repeatable)")
    d.add_argument("--skip", action="append", default=[], choices=CHECK_NAMES, help="a check not to run (repeatable)")
    fmt = d.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="the report as JSON")
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown", help="the report as Markdown")
    d.add_argument("--output", default=None, metavar="FILE", help="write the report to FILE, the summary to stdout")
    d.set_defaults(fn=_diagnose, format="text")
