"""Integration: the StatsD sink against a real StatsD server (collectd's statsd plugin).

collectd runs in the foreground with its own config in tmp_path: the statsd
plugin on a free UDP port on 127.0.0.1, and the csv plugin writing what it
received to tmp_path. The test reads those files back. collectd is installed
(Debian package collectd-core) when missing and possible; otherwise the test
is skipped and says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from nexus_green.events import EventBus
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.monitor import PerformanceMonitor
from nexus_green.monitoring.statsd_sink import StatsDSink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CONFIG = """\
Hostname "nexus"
FQDNLookup false
Interval 1
BaseDir "{tmp}"
PIDFile "{tmp}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "127.0.0.1"
  Port "{port}"
</Plugin>
<Plugin csv>
  DataDir "{tmp}/csv"
  StoreRates false
</Plugin>
"""


def collectd_binary() -> Optional[str]:
    return shutil.which("collectd") or ("/usr/sbin/collectd" if os.path.exists("/usr/sbin/collectd") else None)


def ensure_collectd() -> str:
    found = collectd_binary()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("collectd is not installed and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "collectd-core"], env=env, capture_output=True, text=True, timeout=480
    )
    if proc.returncode != 0:
        proc = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-q", "collectd-core"], env=env, capture_output=True, text=True, timeout=480
        )
    found = collectd_binary()
    if proc.returncode != 0 or not found:
        pytest.skip(f"apt-get install collectd-core failed: {proc.stderr.strip()[-300:]}")
    return found


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def collectd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = ensure_collectd()
    if not os.path.exists("/usr/lib/collectd/statsd.so") or not os.path.exists("/usr/lib/collectd/csv.so"):
        pytest.skip("collectd is installed without its statsd or csv plugin")
    port = free_udp_port()
    conf = tmp_path / "collectd.conf"
    conf.write_text(CONFIG.format(tmp=tmp_path, port=port))
    log = (tmp_path / "collectd.log").open("w")
    proc = subprocess.Popen([binary, "-f", "-C", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Listening on" not in (tmp_path / "collectd.log").read_text():
            assert proc.poll() is None, f"collectd exited: {(tmp_path / 'collectd.log').read_text()}"
            assert time.monotonic() < deadline, "collectd did not start listening within 20 s"
            time.sleep(0.1)
        yield port, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def last_value(tmp: Path, kind: str, stat: str, timeout: float = 20.0) -> float:
    """The newest value collectd's csv plugin wrote for ``stat``."""
    deadline = time.monotonic() + timeout
    while True:
        files = glob.glob(str(tmp / "csv" / "nexus" / "statsd" / f"{kind}-{stat}-*"))
        if files:
            rows = [r for r in Path(files[0]).read_text().splitlines()[1:] if r]
            if rows:
                return float(rows[-1].split(",")[1])
        assert time.monotonic() < deadline, f"collectd wrote no {kind}-{stat} within {timeout} s"
        time.sleep(0.2)


def test_values_reach_collectd_and_come_back(collectd: tuple[int, Path]) -> None:
    port, tmp = collectd
    bus = EventBus()
    cfg = MonitoringConfiguration(statsd_port=port, statsd_prefix="ng")
    with PerformanceMonitor(bus, config=cfg) as mon:
        bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1", duration=0.01, phases={"tcp": 0.01})
        for q in range(250):
            bus.emit(
                "io.stats", conn_id="c1", completed=1, latencies=[0.001 * (q % 9 + 1)], bytes_sent=10, bytes_received=20
            )
        with StatsDSink(mon, config=cfg, timers=False) as sink:
            assert sink.flush() > 0
            snap = mon.snapshot()
    lat = next(m for m in snap["metrics"] if m["name"] == "request.latency")
    assert last_value(tmp, "derive", "ng.requests.completed") == 250
    assert last_value(tmp, "gauge", "ng.connections.active") == 1
    assert last_value(tmp, "gauge", "ng.request.latency.p99") == pytest.approx(lat["p99"], abs=1e-6)
    assert last_value(tmp, "gauge", "ng.request.latency.p50") == pytest.approx(lat["p50"], abs=1e-6)
    # the sink's final flush on close sent only gauges and no new counts: the counter is unchanged
    time.sleep(1.5)
    assert last_value(tmp, "derive", "ng.requests.completed") == 250
