"""The sampling CPU profiler that sees greenlets: a native thread reads the hub thread's running stack.

:class:`SamplingProfiler` owns one OS thread (never a greenlet: a busy hub
would starve a sampler that needs the hub to run). Every ``interval``
seconds (5 ms by default) it reads ``sys._current_frames()`` for the thread
that started it (the hub's thread) and records that thread's running stack,
which is the stack of whichever greenlet is running there at that moment.

Each sample is labelled with its greenlet, two ways:

* by default, by the function the greenlet's stack starts in
  (:func:`entry_label`: gevent's ``Greenlet.run`` is compiled, so a
  greenlet's outermost Python frame is the function it was spawned with;
  the hub is ``Hub``). It costs nothing between samples.
* ``greenlet_names=True``: by the greenlet's name. ``greenlet.getcurrent()``
  answers for the calling thread only, so the running greenlet is learnt
  from a ``greenlet.settrace`` switch hook (no ``sys.settrace``: it runs once
  per switch, not per call) that stores each switch; the sampler reads the
  last one and labels the sample with the target's name (numbered gevent
  names such as ``Greenlet-12`` collapse to ``Greenlet``; the hub is
  ``Hub``). The hook is a dict's ``__setitem__`` (``switches[event] =
  (origin, target)``), a C call, about 230 ns per switch where a Python
  function cost about 400 ns; but a busy client switches twice per request,
  hundreds of thousands of times a second, which made the hook the larger
  part of the sampler's cost (docs/profiling.md), hence opt-in. Switches form
  one chain (each event's origin is the previous event's target), which
  orders a rare ``throw`` (a kill) against the last ``switch``.

Parked greenlets are not walked per sample: enumerating them is too slow for
a 5 ms period, and a parked greenlet uses no CPU.

A sample is a tuple of code objects (cheap to take; names are formatted once
at export) and is weighted by the time since the previous sample, in
microseconds, added up in a dict: memory grows with the number of distinct
stacks, not with time. The weighting matters: the sampler needs the GIL to
sample, and a thread busy in Python hands it over only every
``sys.getswitchinterval()`` (5 ms), while an idle hub (in ``epoll_wait``,
GIL released) can be sampled at every tick; counting samples would
over-weight idle time, adding the elapsed time does not. While it runs, the
sampler lowers the interpreter's switch interval (``sys.setswitchinterval``)
to a tenth of its own interval (0.5 ms for 5 ms), and restores it on stop:
with the default 5 ms a sample waited up to 5 ms for the GIL and then landed
where the busy thread released it by itself (a ``send``), which credited that
system call with time spent elsewhere. Outputs: :meth:`~SamplingProfiler.collapsed`
(Brendan Gregg's flamegraph.pl input, one ``root;...;leaf microseconds``
line per stack) and :meth:`~SamplingProfiler.speedscope` (the sampled-profile format of
https://www.speedscope.app/file-format-schema.json, weights in seconds).

Overhead: bench/bench_profiler_overhead.py measures a Client workload with
the sampler on and off side by side (docs/profiling.md has the figures).

Example::

    >>> import gevent
    >>> def spin():
    ...     end = time.perf_counter() + 0.1
    ...     while time.perf_counter() < end:
    ...         pass
    >>> with SamplingProfiler(interval=0.002) as prof:
    ...     gevent.spawn(spin).join()
    >>> prof.samples > 0, any("spin" in line for line in prof.collapsed().splitlines())
    (True, True)
    >>> sum(prof.stacks().values()) / 1e6 <= prof.elapsed   # weights: seconds seen, in microseconds
    True
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from types import CodeType, FrameType
from typing import Any, Optional

import greenlet
from gevent import monkey

__all__ = [
    "SamplingProfiler",
    "SamplerError",
    "entry_label",
    "frame_label",
    "greenlet_label",
    "SPEEDSCOPE_SCHEMA",
    "parse_collapsed",
]

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
DEFAULT_INTERVAL = 0.005
MAX_DEPTH = 128  # frames kept per sample (the innermost ones); deeper recursion is truncated

# The real thread primitives even after patch_all(): patched ones would be greenlets on the hub.
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")
_NUMBERED = re.compile(r"-\d+$")


class SamplerError(RuntimeError):
    """The sampler was used out of order (started twice, or read while running in a way that cannot work).

    Example::

        >>> p = SamplingProfiler().start()
        >>> try:
        ...     p.start()
        ... except SamplerError as e:
        ...     print(e)
        ... finally:
        ...     p.stop()
        the sampler is already running
    """


def greenlet_label(g: Any) -> str:
    """The label of a greenlet in a sample: its name, with a gevent number suffix dropped; ``Hub``; ``main``.

    Example::

        >>> import gevent
        >>> g = gevent.Greenlet(); g.name = "Greenlet-17"
        >>> greenlet_label(gevent.get_hub()), greenlet_label(g), greenlet_label(None)
        ('Hub', 'Greenlet', 'main')
    """
    if g is None or getattr(g, "parent", 0) is None:
        return "main"
    if type(g).__name__ == "Hub":
        return "Hub"
    name = getattr(g, "name", None)
    if not isinstance(name, str) or not name:
        name = type(g).__name__
    return _NUMBERED.sub("", name)


def entry_label(code: Optional[CodeType]) -> str:
    """The label of a greenlet by the function its stack starts in (the default, free of any hook): ``Hub`` for the hub.

    gevent's ``Greenlet.run`` is compiled, so a greenlet's outermost Python
    frame is the function it was spawned with.

    Example::

        >>> import gevent
        >>> entry_label(gevent.get_hub().run.__code__), entry_label(entry_label.__code__), entry_label(None)
        ('Hub', 'sampler.entry_label', 'main')
    """
    if code is None:
        return "main"
    qualname = getattr(code, "co_qualname", code.co_name)
    if qualname == "Hub.run":
        return "Hub"
    return frame_label(code)


def frame_label(code: CodeType) -> str:
    """How a code object appears in the stacks: ``module.qualname`` (file stem for scripts).

    Example::

        >>> frame_label(frame_label.__code__)
        'sampler.frame_label'
    """
    stem = os.path.splitext(os.path.basename(code.co_filename))[0] or code.co_filename
    return f"{stem}.{getattr(code, 'co_qualname', code.co_name)}"


class SamplingProfiler:
    """Sample the running stack of this thread's greenlets every ``interval`` seconds from a native thread.

    Start it in the thread whose hub you want profiled (normally the main
    thread). ``stop()`` (or leaving the ``with`` block) joins the thread; it
    can be started again and keeps adding to the same counts.
    ``samples`` counts the stacks taken; ``elapsed`` is the time it ran;
    ``ticks`` counts the wake-ups (a wake-up that found the thread gone takes
    no sample).

    Example::

        >>> prof = SamplingProfiler(interval=0.001, greenlet_names=True)
        >>> _ = prof.start(); time.sleep(0.05); prof.stop()
        >>> prof.running, prof.samples > 0, prof.stacks().most_common(1)[0][0][0]
        (False, True, 'main')
    """

    def __init__(
        self, interval: float = DEFAULT_INTERVAL, *, greenlet_names: bool = False, max_depth: int = MAX_DEPTH
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = float(interval)
        self.greenlet_names = greenlet_names
        self.max_depth = max_depth
        self._counts: Counter[tuple[Any, ...]] = Counter()
        self._switches: dict[str, tuple[Any, Any]] = {}  # the switch hook's stores: event -> (origin, target)
        self._target = 0
        self._stop_lock: Any = None
        self._done_lock: Any = None
        self._previous_trace: Any = None
        self._hooked = False
        self._switch: Optional[tuple[float, float]] = None  # (the switch interval before, the one set)
        self._started_at = 0.0
        self.elapsed = 0.0
        self.thread_id: Optional[int] = None  # the sampler thread's ident, once it runs
        self.samples = 0  # stacks taken (their weights add up to the time covered)
        self.ticks = 0
        self.errors = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._stop_lock is not None

    def start(self) -> SamplingProfiler:
        """Start sampling the calling thread; returns ``self``. Raises :class:`SamplerError` if already running."""
        if self._stop_lock is not None:
            raise SamplerError("the sampler is already running")
        self._target = _get_ident()
        self.thread_id = None
        self._switches.clear()
        self._switches["switch"] = (None, greenlet.getcurrent())
        self._hooked = self.greenlet_names
        if self._hooked:
            previous = greenlet.gettrace()
            self._previous_trace = greenlet.settrace(
                self._switches.__setitem__ if previous is None else self._on_switch
            )
        stop, done = _allocate_lock(), _allocate_lock()
        stop.acquire()
        done.acquire()
        self._stop_lock, self._done_lock = stop, done
        before = sys.getswitchinterval()
        wanted = min(before, self.interval / 10)
        sys.setswitchinterval(wanted)
        self._switch = (before, sys.getswitchinterval())
        self._started_at = time.perf_counter()
        try:
            _start_new_thread(self._run, (stop, done))
        except BaseException:
            self._stop_lock = self._done_lock = None
            self._unhook()
            self._restore_switch()
            raise
        return self

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end (idempotent)."""
        stop, done = self._stop_lock, self._done_lock
        if stop is None:
            return
        self._stop_lock = self._done_lock = None
        stop.release()
        # The thread ends within one sample; a bounded wait, so a wedged thread can never hang the caller.
        done.acquire(True, max(1.0, 10 * self.interval))
        self._unhook()
        self._restore_switch()
        self.elapsed += time.perf_counter() - self._started_at

    def _unhook(self) -> None:
        if self._hooked:
            greenlet.settrace(self._previous_trace)
            self._previous_trace = None
            self._hooked = False

    def _restore_switch(self) -> None:
        switch, self._switch = self._switch, None
        if switch is not None and sys.getswitchinterval() == switch[1]:  # unless someone else changed it since
            sys.setswitchinterval(switch[0])

    def __enter__(self) -> SamplingProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_switch(self, event: str, args: Any) -> None:
        # The hook when another one was installed first: the same store, then that hook.
        self._switches[event] = args
        previous = self._previous_trace
        if previous is not None:
            previous(event, args)

    def _run(self, stop: Any, done: Any) -> None:
        self.thread_id = _get_ident()
        try:
            interval, target, counts, depth = self.interval, self._target, self._counts, self.max_depth
            current_frames = sys._current_frames
            clock = time.perf_counter
            # A gap longer than two intervals is this thread descheduled (a busy machine), not the
            # profiled code's time at the stack found when it runs again: it counts as two intervals.
            cap = 2 * interval
            last = clock()
            while not stop.acquire(True, interval):
                self.ticks += 1
                now = clock()
                weight, last = int(min(now - last, cap) * 1e6), now
                frame = current_frames().get(target)
                if frame is None:
                    continue
                try:
                    counts[self._sample(frame, depth)] += weight
                    self.samples += 1
                except Exception:  # a sample must never kill the sampler; counted for the report
                    self.errors += 1
                frame = None
        finally:
            done.release()

    def _sample(self, frame: Optional[FrameType], depth: int) -> tuple[Any, ...]:
        codes: list[Any] = []
        code = None
        while frame is not None:
            code = frame.f_code
            if len(codes) < depth:
                codes.append(code)
            frame = frame.f_back
        codes.append(greenlet_label(self._running()) if self._hooked else entry_label(code))
        codes.reverse()
        return tuple(codes)

    def _running(self) -> Any:
        """The greenlet the last switch (or throw) went to."""
        switched = self._switches.get("switch")
        thrown = self._switches.get("throw")
        if thrown is None or switched is None:
            return (switched or thrown or (None, None))[1]
        if switched[0] is not thrown[1] and thrown[0] is switched[1]:
            return thrown[1]  # thrown from where the last switch went, and no switch since left its target
        return switched[1]

    # ------------------------------------------------------------------ results
    def clear(self) -> None:
        """Forget every sample taken so far."""
        self._counts.clear()
        self.samples = self.ticks = self.errors = 0
        self.elapsed = 0.0

    def stacks(self) -> Counter[tuple[str, ...]]:
        """The samples as ``{(greenlet label, outermost frame, ..., innermost frame): microseconds}``."""
        out: Counter[tuple[str, ...]] = Counter()
        names: dict[Any, str] = {}
        for stack, n in list(self._counts.items()):
            key = [stack[0]]
            for code in stack[1:]:
                name = names.get(code)
                if name is None:
                    name = names[code] = frame_label(code)
                key.append(name)
            out[tuple(key)] += n
        return out

    def code_stacks(self) -> Counter[tuple[Any, ...]]:
        """The samples as taken: ``{(greenlet label, outermost code object, ..., innermost): microseconds}`` (a copy)."""
        return Counter(dict(list(self._counts.items())))

    def functions(self) -> list[tuple[str, int, int]]:
        """``(function, self microseconds, total microseconds)`` for every function seen, most self time first.

        Example::

            >>> p = SamplingProfiler(); p._counts[("main", p.functions.__code__)] += 3
            >>> p.functions()
            [('sampler.SamplingProfiler.functions', 3, 3)]
        """
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for stack, n in self.stacks().items():
            if len(stack) > 1:
                own[stack[-1]] += n
            for name in set(stack[1:]):
                total[name] += n
        return sorted(((f, own[f], total[f]) for f in total), key=lambda t: (-t[1], -t[2], t[0]))

    def greenlets(self) -> Counter[str]:
        """Microseconds per greenlet label."""
        out: Counter[str] = Counter()
        for stack, n in list(self._counts.items()):
            out[stack[0]] += n
        return out

    def collapsed(self) -> str:
        """The samples in collapsed-stack form (flamegraph.pl, speedscope, inferno): ``root;...;leaf microseconds`` lines.

        Example::

            >>> p = SamplingProfiler(); p._counts[("main", p.collapsed.__code__)] += 2
            >>> p.collapsed()
            'main;sampler.SamplingProfiler.collapsed 2\\n'
        """
        lines = [
            f"{';'.join(part.replace(';', ':').replace(' ', '_') for part in stack)} {n}"
            for stack, n in sorted(self.stacks().items())
        ]
        return "".join(line + "\n" for line in lines)

    def speedscope(self, name: str = "nexus_green sampling profile") -> dict[str, Any]:
        """The samples as a speedscope file (one sampled profile, weights in seconds), ready for ``json.dump``.

        Speedscope's sampled profile lists each distinct stack once with its
        weight (the time it was seen running), which is what the sampler keeps.

        Example::

            >>> doc = SamplingProfiler().speedscope()
            >>> doc["$schema"], doc["profiles"][0]["type"], doc["profiles"][0]["unit"]
            ('https://www.speedscope.app/file-format-schema.json', 'sampled', 'seconds')
        """
        frames: list[dict[str, Any]] = []
        index: dict[Any, int] = {}

        def frame_index(key: Any) -> int:
            i = index.get(key)
            if i is None:
                i = index[key] = len(frames)
                if isinstance(key, str):
                    frames.append({"name": f"greenlet {key}"})
                else:
                    frames.append({"name": frame_label(key), "file": key.co_filename, "line": key.co_firstlineno})
            return i

        samples: list[list[int]] = []
        weights: list[float] = []
        for stack, micros in sorted(self._counts.items(), key=lambda kv: -kv[1]):
            samples.append([frame_index(part) for part in stack])
            weights.append(micros / 1e6)
        end = sum(weights)
        return {
            "$schema": SPEEDSCOPE_SCHEMA,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": name,
                    "unit": "seconds",
                    "startValue": 0,
                    "endValue": end,
                    "samples": samples,
                    "weights": weights,
                }
            ],
            "name": name,
            "activeProfileIndex": 0,
            "exporter": "nexus_green.profiling",
        }

    def write(self, directory: str, stem: str = "profile") -> list[str]:
        """Write ``<stem>.collapsed`` and ``<stem>.speedscope.json`` into ``directory``; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        collapsed = os.path.join(directory, f"{stem}.collapsed")
        with open(collapsed, "w", encoding="utf-8") as f:
            f.write(self.collapsed())
        scope = os.path.join(directory, f"{stem}.speedscope.json")
        with open(scope, "w", encoding="utf-8") as f:
            json.dump(self.speedscope(), f)
        return [collapsed, scope]

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SamplingProfiler {state} interval={self.interval * 1000:g}ms samples={self.samples}>"


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """Parse collapsed-stack lines back into ``{stack: count}`` (a check that the output is well formed).

    Example::

        >>> parse_collapsed("main;a.f;a.g 3\\nmain;a.f 1\\n")
        Counter({('main', 'a.f', 'a.g'): 3, ('main', 'a.f'): 1})
    """
    out: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"not a collapsed-stack line: {line!r}")
        out[tuple(stack.split(";"))] += int(count)
    return out
