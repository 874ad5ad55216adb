"""Keep glibc's malloc from handing every activation buffer back to the kernel (issue 15).

    from mmbert.allocator import tune_malloc
    tune_malloc()        # every `mmbert` command, embed, fill_mask and serve call it; idempotent

Why: torch's CPU tensors come from glibc malloc. glibc serves a block above its *mmap threshold*
with a fresh mmap and unmaps it on free, and it trims the heap top back to the kernel above its
*trim threshold*. The threshold starts at 128 KiB and only rises when a large mmapped block is
freed, so in a process that never freed a big block every forward pass maps, faults in (zeroes)
and unmaps the same few-MB activation buffers again and again. Measured on the 2-core Zen 4 EPYC,
mmbert-small, 1 thread, 1,887-token batches, each arm a fresh process (benchmarks/malloc.py;
benchmarks/results/malloc_epyc-zen4-2c_202611.md): int8 +30% (it allocates the most buffers:
quantised activations, int32 accumulators; 92k page faults per pass → 1), fp32 +7%, bf16 +3%,
a tiny-model training step +14% (a whole study run +4%). Before, whether a run was fast also
depended on unrelated history (a 256k-vocabulary embedding freed early raises the threshold by
itself: int8 ran 1.1× bf16 then, 0.9× otherwise).

What: `mallopt(M_MMAP_THRESHOLD, 64 MiB)` (blocks below it come from the heap and are reused)
and `mallopt(M_TRIM_THRESHOLD, 128 MiB)` (up to that much free heap is kept for the next pass).
The cost is resident memory: freed buffers stay mapped, up to the largest working set the process
reached plus 128 MiB. This is what jemalloc/tcmalloc preloading does for PyTorch CPU inference,
without a preload. Left alone when the user chose: $MMBERT_MALLOC=default, glibc's own
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / GLIBC_TUNABLES, or another allocator in
LD_PRELOAD; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("mmbert")

MALLOC_ENV = "MMBERT_MALLOC"  # "default": leave malloc as the C library set it
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state: dict[str, str] = {}


def malloc_state() -> str:
    """What `tune_malloc` did in this process: "tuned", or why not ("not tried yet", …)."""
    return _state.get("state", "not tried yet")


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (module docstring); True when this
    process's malloc runs with them. Never raises."""
    if "state" in _state:
        return _state["state"] == "tuned"
    _state["state"] = why = _tune()
    if why == "tuned":
        log.info("malloc: mmap threshold %d MiB, trim threshold %d MiB ($%s=default leaves them)",
                 MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, MALLOC_ENV)
    return why == "tuned"


def _tune() -> str:
    choice = os.environ.get(MALLOC_ENV, "")
    if choice not in ("", "tuned", "default"):
        log.warning("$%s=%r is not one of: tuned, default; leaving malloc as it is", MALLOC_ENV, choice)
        return f"${MALLOC_ENV} not understood"
    if choice == "default":
        return f"left alone (${MALLOC_ENV}=default)"
    user = [k for k in _USER_SETTINGS if os.environ.get(k)]
    if user:
        return f"left alone ({user[0]} is set)"
    if any(a in os.environ.get("LD_PRELOAD", "") for a in ("jemalloc", "tcmalloc", "mimalloc")):
        return "left alone (another allocator is preloaded)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl, macOS: AttributeError)
    except (OSError, AttributeError):
        return "not glibc"
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return "tuned" if ok else "mallopt refused"
