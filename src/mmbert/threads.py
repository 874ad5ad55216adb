"""How many CPU threads torch should use when other processes may share the cores (issue 15).

    from mmbert.threads import ThreadPolicy
    policy = ThreadPolicy()          # picks threads now from the cores other processes leave free
    for step in ...:
        ...                          # one training step
        policy.update()              # every `every_s` seconds: re-measure, change threads if needed

    python benchmarks/shared_cores.py   # training tokens/s alone vs next to a CPU-bound process

Why: torch's intra-op pool splits every op into one chunk per thread and waits for all of them.
When another process holds a core, the chunk on that core waits for the scheduler, and the op
runs at the speed of the slowest thread — with 2 threads on 2 cores next to one busy process,
both halves wait on each other (issue 15 saw 7–18× slower training at load 3–5, where a fair share
costs 2–3×). Fewer threads than free cores never wait on a descheduled peer.

Policy: threads = the cores this process may run on minus the cores other processes keep busy,
at least 1. "Busy" is the 1-minute load average minus this process's own CPU use over the last
interval (our threads count in the load too), rounded to the nearest core. `MMBERT_THREADS` or
an explicit count fixes the number and turns the policy off.
"""

from __future__ import annotations

import logging
import os
import time

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


def choose_threads(allowed: int, load: float | None, own_cpu: float = 0.0, cap: int | None = None) -> int:
    """Threads for `allowed` cores when the load average is `load` and this process itself used
    `own_cpu` cores' worth of CPU lately: the cores the others leave free, at least 1, at most
    `cap` (torch's default: the physical cores)."""
    cap = min(allowed, cap or allowed)
    if load is None:
        return max(1, cap)
    others = max(0.0, load - own_cpu)
    return max(1, min(cap, round(allowed - others)))


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


def default_threads() -> int:
    """The thread count for a CPU job starting now (inference, evaluation, a training run)."""
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    return choose_threads(allowed_cores(), load_average(), 0.0, cap=torch.get_num_threads())


class ThreadPolicy:
    """Sets torch's threads now and re-checks them every `every_s` seconds in `update()`.

    `threads` fixes the count (no re-checks). Changes are logged ("mmbert" logger, INFO)."""

    def __init__(self, threads: int | None = None, every_s: float = 10.0):
        self.fixed = threads if threads else fixed_threads()
        self.every_s = every_s
        self.cap = torch.get_num_threads()  # torch's default before we touch it: physical cores
        self.threads = self.fixed or choose_threads(allowed_cores(), load_average(), 0.0, cap=self.cap)
        self._set(self.threads, "start")
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def _set(self, n: int, why: str) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        log.info("threads: %d (%s; %d usable cores, load average %s)", n, why, allowed_cores(),
                 f"{load_average():.2f}" if load_average() is not None else "n/a")

    def update(self) -> int:
        """Re-check after every `every_s` seconds; returns the threads in use."""
        if self.fixed:
            return self.threads
        wall = time.perf_counter() - self._wall
        if wall < self.every_s:
            return self.threads
        own = (time.process_time() - self._cpu) / wall  # our cores' worth of CPU since the last check
        n = choose_threads(allowed_cores(), load_average(), own, cap=self.cap)
        if n != self.threads:
            self.threads = n
            self._set(n, f"others use ~{max(0.0, (load_average() or 0) - own):.1f} cores")
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self.threads
