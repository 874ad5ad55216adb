"""Training next to a CPU-bound process: tokens/s alone vs shared, torch's default threads vs
mmbert's thread policy (mmbert/threads.py), issue 15.

    PYTHONPATH=src .venv/bin/python benchmarks/shared_cores.py                 # ~3 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/shared_cores.py --seconds 20 --rounds 3

Each measurement is a fresh process that trains the cpu-demo recipe's pretraining shape (preset
tiny, vocabulary 32768, 4 packed rows of 256 tokens per step (its batch warm-up start), mask 30%, StableAdamW, the real
`train_step`) for `--seconds` after two warm-up steps and reports real tokens/s. Modes:
  default  torch's default intra-op threads (the physical cores), as before issue 15;
  free     the cores other processes leave free, chosen once at start (a load-based rule);
  policy   `ThreadPolicy` as the training loop uses it: starts at `default_threads()`, then
           measures steps and probes the other count (here every 4 s, 2 steps, for a short run).
All run with OMP_WAIT_POLICY=PASSIVE, as every `mmbert` command sets it. The competitor is
`python -c "while True: pass"` (one busy core), started before the worker and killed after it.
Order per round: alone × each mode, then shared × each mode — interleaved, so slow
drifts in the machine's other load hit all four alike. Prints a markdown table; the "kept" column
is shared ÷ alone (the issue's goal: ≥ 40% with one competitor on the demo's 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time


MODES = ("default", "free", "policy")


def worker(mode: str, seconds: float) -> None:
    import numpy as np
    import torch

    from mmbert import EncoderConfig
    from mmbert.data.masking import mask_tokens
    from mmbert.model import build_model
    from mmbert.threads import ThreadPolicy
    from mmbert.train.optim import build_optimizer
    from mmbert.step import mlm_loss_fn, train_step

    from mmbert.threads import _others, allowed_cores, choose_threads

    policy = ThreadPolicy(every_s=4.0, probe_steps=2) if mode == "policy" else None
    if mode == "free":
        torch.set_num_threads(choose_threads(allowed_cores(), _others(), cap=torch.get_num_threads()))
    torch.manual_seed(0)
    vocab, S, R = 32768, 256, 4  # the recipe starts its batch warm-up at 4 rows of 256
    model = build_model(EncoderConfig.from_preset("tiny", vocab_size=vocab), head="mlm")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, max_lr=1e-3)
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)

    def batch():
        lens = np.full(R, S)  # one document per row: the row layout the packer produces at this size
        ids = torch.from_numpy(rng.integers(5, vocab, size=R * S))
        cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
        pos = torch.arange(S).repeat(R)
        inp, labels = mask_tokens(ids, 0.3, special_ids=[0, 1, 2, 3, 4], vocab_size=vocab, mask_id=4, generator=g)
        return {"input_ids": inp, "labels": labels, "cu_seqlens": cu, "position_ids": pos, "max_seqlen": S}

    for _ in range(2):
        train_step(model, opt, [batch()], mlm_loss_fn)
    threads_seen, tokens, t0 = set(), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        threads_seen.add(torch.get_num_threads())
        t = time.perf_counter()
        train_step(model, opt, [batch()], mlm_loss_fn)
        tokens += R * S
        if policy is not None:
            policy.update(R * S, time.perf_counter() - t)
    print(json.dumps({"tokens_per_s": tokens / (time.perf_counter() - t0), "threads": sorted(threads_seen)}))


def run_worker(mode: str, seconds: float) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MMBERT_THREADS", None)
    out = subprocess.run([sys.executable, __file__, "--worker", mode, "--seconds", str(seconds)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="timed training per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.seconds)

    from mmbert.inference import cpu_flags, cpu_model, cpu_vendor

    res: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], set] = {}
    loads = []
    for _ in range(args.rounds):
        for shared in ("alone", "shared"):
            for mode in MODES:
                spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if shared == "shared" else None
                try:
                    loads.append(os.getloadavg()[0])
                    r = run_worker(mode, args.seconds)
                finally:
                    if spin is not None:
                        spin.kill()
                        spin.wait()
                res.setdefault((shared, mode), []).append(r["tokens_per_s"])
                threads.setdefault((shared, mode), set()).update(r["threads"])
                print(f"{shared:6s} {mode:7s} {r['tokens_per_s']:8.0f} tok/s  threads {r['threads']}  "
                      f"load {loads[-1]:.2f}", file=sys.stderr)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Machine: {cpu_vendor()} {cpu_model()} ({' '.join(f for f in ('avx512_bf16', 'amx_bf16') if f in cpu_flags())}), "
          f"{len(os.sched_getaffinity(0))} usable cores; {now}; 1-min load average at the start of each "
          f"measurement {min(loads):.1f}–{max(loads):.1f}; {args.rounds} rounds × {args.seconds:.0f} s, median.\n")
    print("| threads | alone tok/s | next to 1 busy process tok/s | kept | threads used (alone / shared) |")
    print("|---|---:|---:|---:|---|")
    for mode in MODES:
        a, s = statistics.median(res[("alone", mode)]), statistics.median(res[("shared", mode)])
        print(f"| {mode} | {a:.0f} | {s:.0f} | {s / a:.0%} | {sorted(threads[('alone', mode)])} / "
              f"{sorted(threads[('shared', mode)])} |")


if __name__ == "__main__":
    main()
