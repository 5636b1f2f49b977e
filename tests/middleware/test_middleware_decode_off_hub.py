"""decode_off_hub and DecodeSlots: chunked decoding in the threadpool, within a budget, a few at a time.

Unit level, on decoders made by hand and on a FakeClock where the assertion is
about time; tests/middleware/test_hostile_bodies.py proves the same through a
real Client over a real socket.
"""

from __future__ import annotations

import os
import tracemalloc
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
import zstandard

from nexus_green.clock import SYSTEM_CLOCK, FakeClock
from nexus_green.errors import CompressionError, DeadlineExceeded, RequestTimeout
from nexus_green.middleware import offload
from nexus_green.middleware.compression import DictionaryRegistry, ZstdDictionary
from nexus_green.middleware.offload import (
    DEFAULT_DECODE_SLOTS,
    DecodeSlots,
    decode_off_hub,
    decode_slots,
    set_decode_slots,
)
from nexus_green.protocol.compression import BodyDecoder, body_decoder, get_codec

MiB = 1 << 20


class Spinner(BodyDecoder):
    """A decoder that never ends by itself: each step counts, and it is done after ``steps`` of them."""

    __slots__ = ("limit",)

    def __init__(self, steps: int = 10**12) -> None:
        super().__init__("spin", b"", MiB)
        self.limit = steps

    def _step(self, max_output: int, max_input: int) -> None:
        self.produced += 1
        if self.produced >= self.limit:
            self._finish(b"spun")


def _wait(check: Any, timeout: float = 5.0) -> None:
    with gevent.Timeout(timeout):
        while not check():
            gevent.sleep(0.001)


# --------------------------------------------------------------------- slots
def test_slots_count_and_bound_their_waits_on_the_clock() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DecodeSlots(0)
    clock = FakeClock(autojump=False)
    slots = DecodeSlots(1)
    assert slots.acquire(clock, None)
    waiter = gevent.spawn(slots.acquire, clock, clock.now() + 3)
    _wait(lambda: slots.waiting == 1)
    assert repr(slots) == "<DecodeSlots running=1/1 waiting=1 completed=0 abandoned=0 timeouts=0>"
    clock.advance(3)
    assert waiter.get(timeout=5) is False and slots.waiting == 0
    slots.release()
    assert slots.acquire(clock, clock.now()) and slots.running == 1  # free: no wait at all


def test_the_process_wide_slots_can_be_replaced_and_start_fresh_after_fork() -> None:
    assert decode_slots().limit == DEFAULT_DECODE_SLOTS == max(1, min(os.cpu_count() or 1, 4))
    old = set_decode_slots(3)
    try:
        assert decode_slots().limit == 3 and decode_slots() is not old
        held = decode_slots()
        held.acquire(SYSTEM_CLOCK, None)
        offload._fresh_slots_after_fork()  # what a forked child runs: no thread holds a slot there
        assert decode_slots() is not held and decode_slots().running == 0 and decode_slots().limit == 3
    finally:
        set_decode_slots(old.limit)


# --------------------------------------------------------------------- the driver
def test_a_body_decodes_in_the_threadpool_step_by_step() -> None:
    data = os.urandom(3000) * 1000  # 3 MB
    decoder = body_decoder(0x40, get_codec("lz4").compress(data))
    slots = DecodeSlots(1)
    assert decode_off_hub(decoder, slots=slots, chunk=256 * 1024) == data
    assert decoder.steps >= 3000 * 1000 // (256 * 1024)
    assert slots.running == 0 and slots.completed == 1


def test_decoder_errors_reach_the_caller_unchanged_and_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    slots = DecodeSlots(1)
    with pytest.raises(CompressionError, match="^lz4 body expands beyond max_size 1000 bytes$"):
        decode_off_hub(body_decoder(0x40, get_codec("lz4").compress(b"\0" * 5000), 1000), slots=slots)
    gevent.sleep(0.01)
    assert "failed with" not in capfd.readouterr().err  # gevent prints what a worker raises: nothing was raised
    assert slots.running == 0 and slots.completed == 1


def test_no_budget_left_is_a_timeout_before_any_step() -> None:
    clock = FakeClock(start=10.0)
    d = Spinner()
    with pytest.raises(RequestTimeout) as ei:
        decode_off_hub(d, clock=clock, until=10.0, what="fid=4", slots=DecodeSlots(1))
    assert ei.value.phase == "decode" and d.steps == 0
    assert str(ei.value) == "fid=4: no time left to decode 0 bytes of spin (0 bytes out after 0 steps)"
    with pytest.raises(DeadlineExceeded, match="the overall deadline in force was the limit"):
        decode_off_hub(Spinner(), clock=clock, until=9.0, by_deadline=True, slots=DecodeSlots(1))


def test_the_budget_is_checked_between_steps_on_the_injected_clock() -> None:
    clock = FakeClock(autojump=False)
    d = Spinner()
    slots = DecodeSlots(1)

    def later() -> None:
        _wait(lambda: d.steps >= 100)
        clock.advance(5)  # time passes (on the call's clock) while the thread decodes

    g = gevent.spawn(later)
    with pytest.raises(RequestTimeout) as ei:
        decode_off_hub(d, clock=clock, until=5.0, slots=slots, chunk=1)
    g.join(5)
    assert ei.value.phase == "decode" and slots.timeouts == 1
    steps = d.steps
    _wait(lambda: slots.running == 0)
    assert d.steps == steps  # it stopped where the budget ran out


def test_an_abandoned_decode_stops_and_gives_its_slot_back() -> None:
    d = Spinner()
    slots = DecodeSlots(1)
    caller = gevent.spawn(decode_off_hub, d, slots=slots)
    _wait(lambda: d.steps >= 100)
    caller.kill()
    assert slots.abandoned == 1
    _wait(lambda: slots.running == 0)  # the slot comes back when the thread is done, not before
    steps = d.steps
    gevent.sleep(0.05)
    assert d.steps == steps and slots.completed == 1
    assert decode_off_hub(Spinner(steps=5), slots=slots) == b"spun"


def test_past_the_cap_callers_wait_within_their_budget() -> None:
    slots = DecodeSlots(1)
    first = Spinner()
    running = gevent.spawn(decode_off_hub, first, slots=slots)
    _wait(lambda: first.steps > 0)
    clock = FakeClock(start=0.0)
    with pytest.raises(RequestTimeout, match=r"^fid=9: no decode slot came free within the budget \(<DecodeSlots"):
        decode_off_hub(Spinner(5), clock=clock, until=2.0, what="fid=9", slots=slots)
    assert clock.now() == 2.0 and slots.timeouts == 1
    waiting = gevent.spawn(decode_off_hub, Spinner(5), slots=slots)  # no budget: waits as long as it takes
    _wait(lambda: slots.waiting == 1)
    running.kill()
    assert waiting.get(timeout=5) == b"spun"
    assert slots.running == 0 and slots.completed == 2


def test_a_failed_hand_over_to_the_threadpool_gives_the_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise RuntimeError("no threads today")

    slots = DecodeSlots(1)
    hub = SimpleNamespace(threadpool=SimpleNamespace(spawn=refuse))
    monkeypatch.setattr(offload, "gevent", SimpleNamespace(get_hub=lambda: hub))
    with pytest.raises(RuntimeError, match="no threads today"):
        decode_off_hub(Spinner(5), slots=slots)
    assert slots.running == 0


# --------------------------------------------------------------------- dictionaries decode the same way
SAMPLES = [b'{"user": %d, "event": "login", "region": "eu-west-1"}' % i for i in range(400)]


@pytest.fixture(scope="module")
def dictionary() -> ZstdDictionary:
    return ZstdDictionary.train(SAMPLES, size=2048, dict_id=31)


def test_a_dictionary_frame_has_a_first_look_and_a_decoder(dictionary: ZstdDictionary) -> None:
    reg = DictionaryRegistry([dictionary])
    blob = dictionary.compress(SAMPLES[3])
    assert reg.try_decompress(0x80, blob, MiB, 64 * 1024) == SAMPLES[3]
    big = dictionary.compress(SAMPLES[3] * 5000)
    assert reg.try_decompress(0x80, big, MiB, 64 * 1024) is None  # more than one call's room
    assert decode_off_hub(reg.decoder(0x80, big, MiB), slots=DecodeSlots(1)) == SAMPLES[3] * 5000
    plain = get_codec("gzip").compress(b"plain gzip")
    assert reg.try_decompress(0x20, plain, MiB, 1024) == b"plain gzip" == reg.decoder(0x20, plain).run()
    with pytest.raises(CompressionError, match="dictionary id 31, which is not registered"):
        DictionaryRegistry().try_decompress(0x80, blob, MiB, 1024)
    with pytest.raises(CompressionError, match=r"^corrupt zstd body \(2 bytes\)"):
        reg.decoder(0x80, b"\x28\xb5")


def test_a_dictionary_bomb_is_refused_without_expanding_in_memory(dictionary: ZstdDictionary) -> None:
    comp = zstandard.ZstdCompressor(
        level=1, dict_data=zstandard.ZstdCompressionDict(dictionary.as_bytes()), write_content_size=False
    ).compressobj()
    bomb = b"".join(comp.compress(b"\0" * MiB) for _ in range(256)) + comp.flush()  # 256 MiB of zeros
    assert len(bomb) < 64 * 1024
    reg = DictionaryRegistry([dictionary])
    assert reg.try_decompress(0x80, bomb, 16 * MiB, 256 * 1024) is None
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError, match=f"^zstd body expands beyond max_size {16 * MiB} bytes$"):
            decode_off_hub(reg.decoder(0x80, bomb, 16 * MiB), slots=DecodeSlots(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"peak {peak} bytes while refusing a dictionary bomb"  # counted, never kept
    with pytest.raises(CompressionError, match="beyond max_size"):
        dictionary.decompress(bomb, max_size=MiB)
