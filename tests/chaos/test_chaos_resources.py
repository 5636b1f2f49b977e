"""Resource faults: each takes what it says, within its bound, and gives everything back."""

from __future__ import annotations

import resource

import gevent
import pytest
from gevent import monkey

from nexus_green.chaos import CpuSaturation, FdExhaustion, HubWatch, MemoryPressure, ResourceFault, open_fds


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_memory_pressure_is_resident_bounded_and_released() -> None:
    before = rss_mb()
    with MemoryPressure(32) as mem:
        assert mem.active and mem.held_bytes == 32 * 2**20
        assert rss_mb() - before >= 30  # pages were touched
        mem.start()  # idempotent
    assert mem.held_bytes == 0 and not mem.active
    mem.stop()
    assert mem.describe() == "memory pressure 32 MB"
    with pytest.raises(ValueError, match="max_mb"):
        MemoryPressure(10, max_mb=5)


def test_cpu_saturation_burns_a_core_in_native_threads_without_holding_the_hub() -> None:
    cpu = CpuSaturation(duty=0.9, period=0.02, threads=2)
    with HubWatch(interval=0.005) as watch, cpu:
        assert cpu.threads_running == 2
        gevent.sleep(0.3)
    assert cpu.threads_running == 0 and cpu.busy_seconds > 0
    assert watch.samples > 10 and watch.worst_stall < 0.05  # the hub kept running while the threads were busy
    assert "2 thread(s) busy 90%" in cpu.describe()


def test_cpu_saturation_thread_body_stops_on_its_time_bound() -> None:
    lock = monkey.get_original("_thread", "allocate_lock")
    for duty in (1.0, 0.5):  # no rest, and a rest between slices
        cpu = CpuSaturation(duty=duty, period=0.02, max_seconds=0.3)
        cpu._lock = lock()
        cpu.threads_running = 1
        done = lock()
        done.acquire()
        cpu._burn(done)  # in this thread: ends by max_seconds
        assert done.acquire(False) and cpu.threads_running == 0 and cpu.busy_seconds > 0
    with pytest.raises(ValueError):
        CpuSaturation(duty=0)


def test_fd_exhaustion_leaves_few_descriptors_and_restores_the_limit() -> None:
    soft_before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    before = open_fds()
    with FdExhaustion(leave=8, headroom=64) as fds:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert soft == fds.limit <= before + 64 + 1
        assert soft - open_fds() <= 8 + 2 and fds.opened > 40
    assert open_fds() == before and resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft_before
    capped = FdExhaustion(leave=0, limit=before + 20, max_open=5).start()
    assert capped.opened == 5
    capped.stop()
    assert "free under a limit of" in capped.describe()
    with pytest.raises(ValueError):
        FdExhaustion(leave=10, headroom=5)


def test_the_base_class_names_itself() -> None:
    class Nothing(ResourceFault):
        def _start(self) -> None:
            pass

        def _stop(self) -> None:
            pass

    assert Nothing().describe() == "Nothing"
