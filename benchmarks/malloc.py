"""What `mmbert.allocator.tune_malloc()` buys: tokens/s with glibc's mmap/trim thresholds raised
("tuned", what every `mmbert` command does) vs glibc left alone (`MMBERT_MALLOC=default`), issue 15.

    PYTHONPATH=src .venv/bin/python benchmarks/malloc.py                      # ~4 min on 2 idle cores
    PYTHONPATH=src .venv/bin/python benchmarks/malloc.py --rounds 5 --json out/malloc.json

malloc's state is per process (and its thresholds move with the process's history), so every
measurement is a fresh process: the script re-invokes itself with `--worker`, and the worker calls
`tune_malloc()` first thing, as the CLI does, and reports `malloc_state()` — the table shows that
the two arms really ran differently ("tuned" vs "left alone ($MMBERT_MALLOC=default)"), plus the
minor page faults and the share of system CPU time per pass (the mechanism: buffers that glibc
maps, faults in and unmaps on every pass). Rows:
  fp32 / bf16 / int8  our encoder, mmbert-small preset (22 layers, width 384) with vocab_size 1024,
         random weights, `inference.prepare(encoder, dtype)` (int8 = `dtype="int8"`'s dynamic
         quantisation), `--docs` documents of N(256, 64) tokens (`apps.bench.set_lengths`, seed 0)
         packed into ONE batch by `inference.pack` (8 docs: 1,887 tokens); one warm-up pass, then
         `--passes` timed passes, median. The vocabulary is small on purpose: glibc raises its mmap
         threshold by itself whenever a large mmapped block is freed, and freeing a 256k-vocabulary
         embedding (a copy during load or `prepare`) does exactly that, which makes "default" fast
         by accident and hides the effect a process without that history sees.
  train  the tiny preset's MLM as `make demo` pretrains it (vocab 32768, 4 packed rows of 256
         tokens, mask 30%, StableAdamW, the real `mmbert.step.train_step`): 2 warm-up steps, then
         `--steps` timed steps, tokens/s over them.
Each round runs every row in both arms back to back, alternating which arm goes first (A B, B A,
…), so load from other jobs hits both alike; the table shows the median over rounds and the
range of the per-round ratio tuned ÷ default. `--threads` intra-op threads (default 1). Results in
benchmarks/results/malloc_<machine>_<yyyymm>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROWS = ("fp32", "bf16", "int8", "train")
ARMS = ("tuned", "default")


def _usage() -> tuple[int, float]:
    """(minor page faults, system CPU seconds) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def _measure(step, repeats: int, tokens: int) -> dict:
    """Time `repeats` calls of step(); tokens/s from the median call, faults and system time per call."""
    faults0, sys0 = _usage()
    cpu0, times = time.process_time(), []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    faults1, sys1 = _usage()
    cpu = time.process_time() - cpu0
    return {"tokens_per_s": tokens / statistics.median(times), "faults_per_pass": (faults1 - faults0) / repeats,
            "sys_share": (sys1 - sys0) / cpu if cpu > 0 else 0.0}


def infer_worker(dtype: str, docs: int, passes: int) -> dict:
    import torch

    from mmbert import EncoderConfig
    from mmbert.apps.bench import make_batches, set_lengths
    from mmbert.inference import DTYPES, pack, prepare
    from mmbert.model import build_model

    torch.manual_seed(0)
    cfg = EncoderConfig.from_preset("mmbert-small", vocab_size=1024)
    encoder = prepare(build_model(cfg, head="none").eval(), DTYPES[dtype])
    lengths = set_lengths("normal256", docs, 0)
    p = pack(make_batches(lengths, cfg.vocab_size, sum(lengths), 0)[0], torch.device("cpu"))  # one batch

    def forward():
        encoder(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen)

    with torch.inference_mode():
        forward()  # warm-up
        return _measure(forward, passes, sum(lengths))


def train_worker(steps: int) -> dict:
    import numpy as np
    import torch

    from mmbert import EncoderConfig
    from mmbert.data.masking import mask_tokens
    from mmbert.model import build_model
    from mmbert.step import mlm_loss_fn, train_step
    from mmbert.train.optim import build_optimizer

    torch.manual_seed(0)
    vocab, S, R = 32768, 256, 4  # the cpu-demo recipe's pretraining shape at its batch warm-up start
    model = build_model(EncoderConfig.from_preset("tiny", vocab_size=vocab), head="mlm")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, max_lr=1e-3)
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)

    def batch() -> dict:
        ids = torch.from_numpy(rng.integers(5, vocab, size=R * S))
        cu = torch.arange(0, R * S + 1, S, dtype=torch.int32)  # one document per row
        inp, labels = mask_tokens(ids, 0.3, special_ids=[0, 1, 2, 3, 4], vocab_size=vocab, mask_id=4, generator=g)
        return {"input_ids": inp, "labels": labels, "cu_seqlens": cu, "position_ids": torch.arange(S).repeat(R),
                "max_seqlen": S}

    batches = [batch() for _ in range(steps + 2)]  # made up front: only the steps are timed
    for b in batches[:2]:
        train_step(model, opt, [b], mlm_loss_fn)
    it = iter(batches[2:])
    return _measure(lambda: train_step(model, opt, [next(it)], mlm_loss_fn), steps, R * S)


def worker(args: argparse.Namespace) -> None:
    from mmbert.allocator import malloc_state, tune_malloc

    tune_malloc()  # before torch allocates anything, as `mmbert`'s CLI does
    import torch

    torch.set_num_threads(args.threads)
    r = train_worker(args.steps) if args.worker == "train" else infer_worker(args.worker, args.docs, args.passes)
    print(json.dumps({**r, "malloc": malloc_state(), "threads": torch.get_num_threads()}))


def run_worker(row: str, arm: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("MMBERT_MALLOC", None)
    if arm == "default":
        env["MMBERT_MALLOC"] = "default"
    cmd = [sys.executable, __file__, "--worker", row, "--threads", str(args.threads), "--docs", str(args.docs),
           "--passes", str(args.passes), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: the {row} worker ({arm} malloc) failed with exit code {out.returncode}:\n"
                 f"{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    from mmbert.inference import SPEED_FLAGS, cpu_flags, cpu_model, cpu_vendor
    import torch

    flags = " ".join(f for f in SPEED_FLAGS if f in cpu_flags()) or "none of " + " ".join(SPEED_FLAGS)
    libc = " ".join(platform.libc_ver()) or "unknown libc"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{cpu_vendor()} {cpu_model()} ({flags}), {len(os.sched_getaffinity(0))} usable cores, {libc}, "
            f"torch {torch.__version__}; {now}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every row in both arms")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--docs", type=int, default=8, help="documents in the one packed inference batch")
    ap.add_argument("--passes", type=int, default=3, help="timed forward passes per inference worker")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per training worker")
    ap.add_argument("--json", default=None, help="also write every worker's figures to this file")
    ap.add_argument("--worker", default=None, choices=ROWS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown row {unknown[0]!r} in --rows; choose from {','.join(ROWS)}")

    load_before = os.getloadavg()[0]
    res: dict[str, dict[str, list[dict]]] = {r: {a: [] for a in ARMS} for r in rows}
    for k in range(args.rounds):
        for row in rows:
            for arm in (ARMS if k % 2 == 0 else ARMS[::-1]):
                r = run_worker(row, arm, args)
                res[row][arm].append(r)
                print(f"round {k + 1} {row:5s} {arm:7s} {r['tokens_per_s']:7.0f} tok/s  "
                      f"{r['faults_per_pass']:8.0f} faults/pass  sys {r['sys_share']:.0%}  ({r['malloc']})",
                      file=sys.stderr)
    load_after = os.getloadavg()[0]

    print(f"Machine: {machine()}; 1-min load average {load_before:.2f} before, {load_after:.2f} after.")
    print(f"{args.threads} thread(s); {args.rounds} rounds, each arm a fresh process, median over rounds; "
          f"inference: {args.docs} docs N(256,64) in one packed batch, {args.passes} timed passes; "
          f"train: tiny MLM, {args.steps} timed steps.\n")
    print("| workload | tuned tok/s | default tok/s | tuned ÷ default | per-round ratio | "
          "minor faults per pass (tuned / default) | system time share (tuned / default) | malloc_state() |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        t, d = res[row]["tuned"], res[row]["default"]

        def med(runs: list[dict], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(t, d)]
        states = " / ".join("; ".join(sorted({r["malloc"] for r in runs})) for runs in (t, d))
        name = f"{row} (mmbert-small, vocab 1024)" if row != "train" else "train (tiny MLM, vocab 32768)"
        print(f"| {name} | {med(t, 'tokens_per_s'):.0f} | {med(d, 'tokens_per_s'):.0f} | "
              f"{med(t, 'tokens_per_s') / med(d, 'tokens_per_s'):.2f}× | {min(ratios):.2f}–{max(ratios):.2f}× | "
              f"{med(t, 'faults_per_pass'):.0f} / {med(d, 'faults_per_pass'):.0f} | "
              f"{med(t, 'sys_share'):.0%} / {med(d, 'sys_share'):.0%} | {states} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "load_before": load_before, "load_after": load_after,
                       "args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
