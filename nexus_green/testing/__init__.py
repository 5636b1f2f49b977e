"""The public testing kit: an embedded NexusKit server, a SOCKS5 test proxy,
hostile peers on raw sockets (refusing, blackholed, silent, slow, scripted,
restartable), test certificates, a FakeClock, and a harness that reruns a test
module after ``gevent.monkey.patch_all()``, for testing code built on nexus_green.

Example::

    >>> from nexus_green.testing import EmbeddedServer, FakeClock
    >>> with EmbeddedServer() as server:
    ...     server.url.startswith("tcp://127.0.0.1:")
    True
"""

from ..clock import FakeClock
from .hostile import (
    CLOSE,
    RESET,
    AcceptAndClose,
    AcceptAndStall,
    Blackhole,
    EchoPeer,
    FramePeer,
    HostilePeer,
    ListeningPeer,
    Pause,
    RefusingPort,
    RestartableServer,
    ScriptedPeer,
    SilentPeer,
    SlowReader,
    accept_and_close,
    accept_and_stall,
    blackhole,
    echo_peer,
    frame_peer,
    refusing_port,
    response_to,
    scripted_peer,
    settle_io,
    silent_peer,
    slow_reader,
)
from .patched import SELF_TEST, PatchedRun, run_module_patched, running_patched
from .redis_server import RedisServer, RedisServerUnavailable
from .server import (
    FID_CLOSE,
    FID_DELAY,
    FID_ECHO,
    FID_ERROR,
    FID_FILE,
    FID_GARBAGE,
    FID_INFO,
    FID_PUSH,
    FID_SILENT,
    EmbeddedServer,
    Reply,
)
from .socks5_proxy import ProxyRequest, Socks5Proxy
from .tls import CertificateKit, TLSEchoServer, make_test_certificates

__all__ = [
    "settle_io",
    "Socks5Proxy",
    "RedisServer",
    "RedisServerUnavailable",
    "ProxyRequest",
    "make_test_certificates",
    "CertificateKit",
    "TLSEchoServer",
    "EmbeddedServer",
    "Reply",
    "scripted_peer",
    "ScriptedPeer",
    "HostilePeer",
    "ListeningPeer",
    "RefusingPort",
    "refusing_port",
    "Blackhole",
    "blackhole",
    "AcceptAndClose",
    "accept_and_close",
    "AcceptAndStall",
    "accept_and_stall",
    "SilentPeer",
    "silent_peer",
    "SlowReader",
    "slow_reader",
    "FramePeer",
    "frame_peer",
    "EchoPeer",
    "echo_peer",
    "RestartableServer",
    "Pause",
    "CLOSE",
    "RESET",
    "response_to",
    "run_module_patched",
    "PatchedRun",
    "running_patched",
    "SELF_TEST",
    "FakeClock",
    "FID_ECHO",
    "FID_DELAY",
    "FID_ERROR",
    "FID_PUSH",
    "FID_SILENT",
    "FID_CLOSE",
    "FID_GARBAGE",
    "FID_INFO",
    "FID_FILE",
]
