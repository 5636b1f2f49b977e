"""The chaos toolkit: a frame-aware fault-injecting proxy, in-process resource faults, and named scenarios.

Users test their own services with it, and the project proves its
resilience claims with it (``make chaos``, docs/chaos.md). This machine's
kernel has no netem, so faults are injected in user space:

* :class:`ChaosProxy` (:mod:`.proxy`) sits between a client and a server,
  parses NexusKit frames and applies the faults a :class:`FaultInjector`
  (:mod:`.faults`) decides for each frame: latency, loss, reordering,
  duplication, close/reset, half-open, throttling, sliced writes, slow
  responses, a black hole, error answers, partial failure, service down, a
  server that stops reading, push floods. Every fault has a direction, a
  probability, an optional predicate (Fid, Qid) and a seed.
* :class:`ControlServer` (:mod:`.control`) is its local HTTP control API;
  ``nexus-green chaos proxy --listen ... --upstream ...`` runs both.
* :class:`MemoryPressure`, :class:`CpuSaturation`, :class:`FdExhaustion`
  (:mod:`.resources`) are bounded in-process faults, restored on exit.
* :data:`SCENARIOS` (:mod:`.scenarios`) are named :class:`ChaosScenario` s.
* :class:`HubWatch` (:mod:`.hubwatch`) tells how long the hub was held.

Example::

    >>> from nexus_green import Client
    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server, ChaosProxy(server) as proxy, Client(proxy.url) as client:
    ...     with proxy.injector.injected(latency(0.05)):
    ...         client.request(b"slow", fid=1).latency >= 0.05
    True
"""

from .control import ControlServer
from .faults import (
    KINDS,
    Action,
    Fault,
    FaultInjector,
    blackhole,
    close,
    drop,
    duplicate,
    error,
    fault_from_dict,
    half_open,
    latency,
    partial_failure,
    push_flood,
    reorder,
    reset,
    service_down,
    slice_writes,
    slow_response,
    stop_reading,
    throttle,
)
from .hubwatch import HubWatch
from .proxy import DOWNSTREAM, UPSTREAM, ChaosProxy
from .resources import CpuSaturation, FdExhaustion, MemoryPressure, ResourceFault, open_fds
from .scenarios import SCENARIOS, ChaosScenario, ScenarioRun, Step, scenario

__all__ = [
    "ChaosProxy",
    "ControlServer",
    "FaultInjector",
    "Fault",
    "Action",
    "KINDS",
    "UPSTREAM",
    "DOWNSTREAM",
    "fault_from_dict",
    "latency",
    "slow_response",
    "drop",
    "reorder",
    "duplicate",
    "close",
    "reset",
    "half_open",
    "throttle",
    "slice_writes",
    "blackhole",
    "error",
    "partial_failure",
    "service_down",
    "stop_reading",
    "push_flood",
    "ResourceFault",
    "MemoryPressure",
    "CpuSaturation",
    "FdExhaustion",
    "open_fds",
    "HubWatch",
    "ChaosScenario",
    "ScenarioRun",
    "Step",
    "scenario",
    "SCENARIOS",
]
