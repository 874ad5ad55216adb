"""How many CPU threads torch should use when other processes may share the cores (issue 15).

    from mmbert.threads import ThreadPolicy
    policy = ThreadPolicy()          # threads for now (see default_threads)
    for step in ...:
        ...                          # one training step
        policy.update(tokens, seconds)   # records the step; now and then tries another thread count

    PYTHONPATH=src python benchmarks/shared_cores.py   # training alone vs next to a busy process

Why: torch's intra-op pool cuts every op into one chunk per thread and waits for all of them.
When another process holds a core, the chunk on that core waits for the scheduler. With OpenMP's
default wait policy the waiting threads spin and steal the time the late one needs (issue 15 saw
7–18x slower training at load 3–5); with OMP_WAIT_POLICY=PASSIVE (every `mmbert` command sets it)
they sleep, and then more threads usually means a larger fair share of a busy machine
(benchmarks/results/shared_cores_*.md: on 2 shared cores at load ~17, 2 threads trained ~1.3x
faster than 1). Which count wins depends on the machine, the load and the wait policy:

- start: `default_threads()` — the usable cores (capped at torch's default) when idle threads
  sleep (PASSIVE), else the cores other processes leave free. "Busy" is measured now, not
  averaged over a minute: runnable tasks (/proc/loadavg, 4th field) minus this process's own
  runnable threads (/proc/self/task/*/stat), median of a few samples 10 ms apart;
- `update(tokens)` after every step records seconds per token; every `every_s` seconds it runs
  `probe_steps` steps at the other candidate count (the free cores, or all, or half) and keeps
  whichever had the lower median time per token (a switch needs a 5% win).

`MMBERT_THREADS=N` (or ThreadPolicy(threads=N), `--threads N`) fixes the count: no probing.
The training loop uses the start count only (`probe=False`): a count changed mid-run may round CPU
reductions differently, which exact resume cannot allow, and on 2 shared cores the start count kept
97% of its speed next to a busy process against 81% with probing (benchmarks/results/shared_cores_*).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from typing import Callable

import torch

log = logging.getLogger("mmbert")
ENV = "MMBERT_THREADS"


def allowed_cores() -> int:
    """Cores this process may run on (its CPU affinity; containers and taskset narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - no load average on this platform
        return None


def _own_running() -> int:
    """Threads of this process in state R (running or runnable) right now."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        n += stat[stat.rindex(")") + 2] == "R"  # field 3, after "pid (comm)"
    return max(n, 1)  # the thread reading this is running


def others_busy(samples: int = 5, interval_s: float = 0.01) -> float | None:
    """Runnable tasks of other processes right now (median of `samples`); None without /proc."""
    vals = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        vals.append(max(0, running - _own_running()))
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(vals))


def choose_threads(allowed: int, others: float | None, cap: int | None = None) -> int:
    """Threads for `allowed` cores when other processes keep `others` cores busy: the cores they
    leave free, at least 1, at most `cap` (torch's default: the physical cores)."""
    cap = min(allowed, cap or allowed)
    if others is None:
        return max(1, cap)
    return max(1, min(cap, round(allowed - others)))


def _others(own_cpu: float = 0.0) -> float | None:
    busy = others_busy()
    if busy is None and load_average() is not None:
        busy = max(0.0, load_average() - own_cpu)
    return busy


def fixed_threads() -> int | None:
    """$MMBERT_THREADS as a positive int, None when unset; anything else is refused."""
    raw = os.environ.get(ENV)
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}={raw!r} is not a positive integer; set it to a thread count (e.g. 1) or unset it")
    return n


def idle_threads_sleep() -> bool:
    """True when OpenMP's idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def default_threads() -> int:
    """The thread count for a CPU job starting now (inference, evaluation, a training run's start)."""
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    cap = torch.get_num_threads()
    if idle_threads_sleep():
        return choose_threads(allowed_cores(), 0.0, cap=cap)
    return choose_threads(allowed_cores(), _others(), cap=cap)


class ThreadPolicy:
    """Sets torch's threads now; `update(tokens)` after each training step measures the step and
    now and then tries another count, keeping the faster (module docstring). `threads` fixes the
    count. Changes are logged ("mmbert" logger, INFO)."""

    def __init__(self, threads: int | None = None, every_s: float = 30.0, probe_steps: int = 3,
                 clock: Callable[[], float] = time.monotonic, probe: bool = True):
        self.fixed = threads if threads else fixed_threads()
        if not probe:  # the start count only (the training loop: see train.loop)
            every_s = float("inf")
        self.every_s, self.probe_steps, self.clock = every_s, probe_steps, clock
        self.cap = torch.get_num_threads()  # torch's default before we touch it: physical cores
        self.threads = self.fixed or default_threads()
        self._set(self.threads, "fixed" if self.fixed else "start")
        self.per_token: dict[int, deque] = {}  # threads → recent seconds per token
        self._steps = 0
        self._probing: int | None = None  # steps left at the probed count
        self._before = self.threads  # the count a probe started from
        self._next_probe = self.clock() + every_s

    def _set(self, n: int, why: str) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self.threads = n
        log.info("threads: %d (%s; %d usable cores, load average %s)", n, why, allowed_cores(),
                 "n/a" if load_average() is None else f"{load_average():.2f}")

    def _alternative(self) -> int:
        free = choose_threads(allowed_cores(), _others(), cap=self.cap)
        if free != self.threads:
            return free
        return self.cap if self.threads != self.cap else max(1, self.cap // 2)

    def update(self, tokens: int, seconds: float) -> int:
        """Call after every step with its tokens and seconds; returns the threads for the next step."""
        if self.fixed or self.cap <= 1:
            return self.threads
        now = self.clock()
        self._steps += 1
        if self._steps == 1:  # the first step carries one-off warm-up costs
            return self.threads
        self.per_token.setdefault(self.threads, deque(maxlen=self.probe_steps)).append(seconds / max(tokens, 1))
        if self._probing is not None:
            self._probing -= 1
            if self._probing == 0:
                self._probing = None
                self._next_probe = now + self.every_s
                tried, before = statistics.median(self.per_token[self.threads]), \
                    statistics.median(self.per_token[self._before])
                if not tried < 0.95 * before:
                    self._set(self._before, f"kept: {1 / before:,.0f} tok/s vs {1 / tried:,.0f} with {self.threads}")
                else:
                    log.info("threads: %d (%.0f tok/s vs %.0f with %d)", self.threads, 1 / tried, 1 / before,
                             self._before)
        elif now >= self._next_probe and len(self.per_token[self.threads]) >= self.probe_steps:
            alt = self._alternative()
            if alt == self.threads:
                self._next_probe = now + self.every_s
            else:
                self._before = self.threads
                self.per_token.pop(alt, None)
                self._probing = self.probe_steps
                self._set(alt, f"probing against {self._before}")
        return self.threads
