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
at least 1, at most torch's default. "Busy" is measured now, not averaged over a minute: the
kernel's count of runnable tasks (/proc/loadavg, 4th field), minus this process's own runnable
threads (/proc/self/task/*/stat), median of a few samples 10 ms apart, rounded to whole cores.
Where /proc is absent it falls back to the 1-minute load average minus our own CPU use.
`MMBERT_THREADS` or an explicit count fixes the number and turns the policy off.
"""

from __future__ import annotations

import logging
import os
import statistics
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


def default_threads() -> int:
    """The thread count for a CPU job starting now (inference, evaluation, a training run)."""
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    return choose_threads(allowed_cores(), _others(), cap=torch.get_num_threads())


class ThreadPolicy:
    """Sets torch's threads now and re-checks them every `every_s` seconds in `update()`.

    `threads` fixes the count (no re-checks). Changes are logged ("mmbert" logger, INFO)."""

    def __init__(self, threads: int | None = None, every_s: float = 10.0):
        self.fixed = threads if threads else fixed_threads()
        self.every_s = every_s
        self.cap = torch.get_num_threads()  # torch's default before we touch it: physical cores
        self.others = None if self.fixed else _others()
        self.threads = self.fixed or choose_threads(allowed_cores(), self.others, cap=self.cap)
        self._set(self.threads, "fixed" if self.fixed else "start")
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def _set(self, n: int, why: str) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        log.info("threads: %d (%s; %d usable cores, other processes busy %s, load average %s)", n, why,
                 allowed_cores(), "n/a" if self.others is None else f"{self.others:.1f}",
                 "n/a" if load_average() is None else f"{load_average():.2f}")

    def update(self) -> int:
        """Re-check after every `every_s` seconds; returns the threads in use."""
        if self.fixed:
            return self.threads
        wall = time.perf_counter() - self._wall
        if wall < self.every_s:
            return self.threads
        own = (time.process_time() - self._cpu) / wall  # our cores' worth of CPU since the last check
        self.others = _others(own)
        n = choose_threads(allowed_cores(), self.others, cap=self.cap)
        if n != self.threads:
            self.threads = n
            self._set(n, "re-checked")
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self.threads
