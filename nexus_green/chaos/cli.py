"""``nexus-green chaos ...``: the chaos proxy and the scenario library on the command line.

* ``nexus-green chaos proxy --listen HOST:PORT --upstream HOST:PORT`` runs a
  :class:`~nexus_green.chaos.ChaosProxy` with its HTTP control API
  (``--control HOST:PORT``, default ``127.0.0.1:0``). ``--fault JSON`` (repeatable) adds faults
  at start, ``--scenario NAME`` runs a scenario at start, ``--duration S``
  stops after S seconds (0: until Ctrl-C). It prints
  ``proxy listening on HOST:PORT -> HOST:PORT`` and ``control on http://...``.
* ``nexus-green chaos scenarios`` prints the scenario library.

Example::

    >>> import argparse
    >>> ap = argparse.ArgumentParser(prog="nexus-green")
    >>> add_commands(ap.add_subparsers(dest="command", required=True))
    >>> args = ap.parse_args(["chaos", "scenarios"])
    >>> args.fn(args)  # doctest: +ELLIPSIS
    error-storm ...
    0
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any

import gevent
from gevent.event import Event

__all__ = ["add_commands", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a tuple; ``argparse.ArgumentTypeError`` if malformed.

    >>> parse_address("127.0.0.1:0"), parse_address("[::1]:7600")
    (('127.0.0.1', 0), ('::1', 7600))
    >>> parse_address("nowhere")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected HOST:PORT, got 'nowhere'
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _fault(text: str) -> Any:
    from .faults import fault_from_dict

    try:
        return fault_from_dict(json.loads(text))
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise argparse.ArgumentTypeError(f"bad --fault {text!r}: {exc}") from None


def _proxy(args: argparse.Namespace) -> int:
    from .control import ControlServer
    from .proxy import ChaosProxy
    from .scenarios import SCENARIOS

    if args.scenario and args.scenario not in SCENARIOS:
        print(f"no scenario named {args.scenario!r}; one of: {', '.join(SCENARIOS)}")
        return 2
    host, port = args.listen
    control_host, control_port = args.control
    stop = Event()
    on_sigint = gevent.signal_handler(signal.SIGINT, stop.set)
    with (
        ChaosProxy(args.upstream, host=host, port=port) as proxy,
        ControlServer(proxy, host=control_host, port=control_port) as api,
    ):
        for fault in args.fault:
            proxy.injector.add(fault)
        print(f"proxy listening on {proxy.host}:{proxy.port} -> {args.upstream[0]}:{args.upstream[1]}", flush=True)
        print(f"control on {api.url}", flush=True)
        for fault_id, fault in proxy.injector.faults():
            print(f"  fault {fault_id}: {fault.describe()}", flush=True)
        if args.scenario:
            api.runs.append(SCENARIOS[args.scenario].start(proxy.injector))
            print(f"  scenario {args.scenario} started", flush=True)
        try:
            stop.wait(args.duration or None)
        finally:
            on_sigint.cancel()
        print(f"stopped: {proxy!r}", flush=True)
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from .scenarios import describe_all

    for row in describe_all():
        what = "; ".join(row["faults"] + row["resources"])
        print(f"{row['name']} ({row['duration']:g} s): {row['description']} [{what}]")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``chaos proxy`` and ``chaos scenarios`` to the ``nexus-green`` subcommands ``sub``."""
    chaos = sub.add_parser("chaos", help="the chaos proxy and the scenario library (docs/chaos.md)")
    commands = chaos.add_subparsers(dest="chaos_command", required=True)
    p = commands.add_parser("proxy", help="run a fault-injecting proxy with an HTTP control API")
    p.add_argument("--listen", type=parse_address, default=("127.0.0.1", 0), help="HOST:PORT (port 0: the OS chooses)")
    p.add_argument("--upstream", type=parse_address, required=True, help="HOST:PORT of the server")
    p.add_argument("--control", type=parse_address, default=("127.0.0.1", 0), help="HOST:PORT of the control API")
    p.add_argument("--fault", type=_fault, action="append", default=[], help="a fault as JSON (repeatable)")
    p.add_argument("--scenario", default="", help="run this scenario at start")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    p.set_defaults(fn=_proxy)
    s = commands.add_parser("scenarios", help="list the scenario library")
    s.set_defaults(fn=_scenarios)
