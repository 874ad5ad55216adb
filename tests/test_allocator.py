"""mmbert.allocator.tune_malloc: what it does to a process, and when it leaves malloc alone. Each case
runs in a fresh interpreter: malloc settings belong to a process and `tune_malloc` acts once."""

import json
import os
import subprocess
import sys

import pytest

# A forward-pass-like loop: a few MB of activations made and freed again and again, with sizes that
# vary (as packed batches do). Prints the minor page faults it caused after a warm-up.
LOOP = """
import json, resource, sys, torch
from mmbert.allocator import malloc_state, tune_malloc
tuned = tune_malloc()
torch.set_num_threads(1)
w = torch.randn(384, 1152)
def step(rows):
    x = torch.randn(rows, 384)
    return ((x @ w).relu() @ w.t()).sum()
for rows in (900, 1100, 1300):
    step(rows)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):
    step(900 + 200 * (i % 3))
print(json.dumps({"tuned": tuned, "state": malloc_state(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MMBERT_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _glibc(), reason="tune_malloc only acts on glibc")
def test_tuned_malloc_stops_the_page_faults_of_every_pass():
    tuned, alone = _run({}), _run({"MMBERT_MALLOC": "default"})
    assert tuned["tuned"] and tuned["state"] == "tuned"
    assert not alone["tuned"] and "MMBERT_MALLOC=default" in alone["state"]
    # Left alone, glibc maps each ~1–5 MB activation buffer fresh and unmaps it on free: every
    # pass faults its pages in again (≥ 250 4-KiB pages a pass over 30 passes). Tuned, the
    # buffers are reused from the heap: the loop stops faulting (a few stray pages at most).
    assert alone["faults"] > 30 * 250, alone
    assert tuned["faults"] < alone["faults"] / 20, (tuned, alone)


@pytest.mark.parametrize("env, why", [({"MALLOC_MMAP_THRESHOLD_": "1048576"}, "MALLOC_MMAP_THRESHOLD_ is set"),
                                      ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}, "GLIBC_TUNABLES"),
                                      ({"LD_PRELOAD": "/nonexistent/libjemalloc.so.2"}, "preloaded"),
                                      ({"MMBERT_MALLOC": "fast"}, "not understood")])
def test_the_users_own_choice_is_left_alone(env, why):
    r = _run(env)
    assert not r["tuned"] and why in r["state"], r


def test_once_per_process():
    out = subprocess.run([sys.executable, "-c", "from mmbert.allocator import tune_malloc, malloc_state\n"
                          "print(malloc_state()); a = tune_malloc(); b = tune_malloc(); print(a == b, malloc_state())"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "MMBERT_MALLOC"})
    first, second = out.stdout.strip().splitlines()
    assert first == "not tried yet" and second.startswith("True ")
