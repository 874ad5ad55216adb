"""Data-stream benchmark: packing efficiency and loader throughput vs what the tiny model trains at.

    .venv/bin/python benchmarks/data_stream.py                       # synthetic shards (see below)
    .venv/bin/python benchmarks/data_stream.py --shards out/shards   # real shards (`mmbert data prepare`)

Prints one markdown table (copy it to benchmarks/results/data_stream_<machine>_<yyyymm>.md):
- packing efficiency = non-pad tokens / all tokens of the rows the loader emits (bos/eos count as
  non-pad), at seq 1024 and 8192, over a long run of the real stream (sampling + chunking + packing),
  and how far the emitted language token shares are from p (total variation) over the same rows;
- loader throughput = tokens/s of `MLMLoader.next_batch` (everything: sampling, packing, reading
  tokens, masking, collation) in this process, no prefetch;
- per-rank packing (`--ranks-only`): CPU seconds rank 0 of W spends on its share of a global batch
  with one packing lane (it packs every row) and with W lanes (only its own);
- tiny-model training throughput = tokens/s of forward + backward + AdamW step of the `tiny` preset
  on the same packed batches, measured in the same run, so the ratio is side by side.
Without --shards it writes synthetic shards: 30 languages with a Zipf-like spread of sizes
(~48k documents, ~29M tokens) and web-like lognormal document lengths (median 300 tokens, σ 1.2, capped at
100k), which is a stand-in for the embedded corpus, not the corpus itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmbert.data.loader import LoaderSpec, MLMLoader, StreamPhase
from mmbert.data.shards import ShardIndex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import write_random_shards  # noqa: E402  (tests/synthetic.py: the shard writer the tests use)


def synthetic(root: str, n: int = 30) -> ShardIndex:
    width = max(2, len(str(n - 1)))   # l00…l29 as before for the default 30
    langs = {f"l{i:0{width}d}_Latn": (max(20, int(12000 / (i + 1))), 300.0) for i in range(n)}
    return write_random_shards(root, langs, vocab_size=32768, seed=0, sigma=1.2)


def efficiency(shards: str, seq_len: int, rows: int, buffer_size: int) -> tuple[float, float, float]:
    """(non-pad fraction, rows/s, total variation between the emitted content-token shares and p)."""
    loader = MLMLoader(shards, StreamPhase(temperature=0.5, mask_rate=0.3, seq_len=seq_len),
                       LoaderSpec(seed=0, rows_per_batch=1, buffer_size=buffer_size))
    real = total = 0
    per_lang = np.zeros(len(loader.all_languages))
    t = time.perf_counter()
    for _ in range(rows):
        refs, lens = loader._next_row_refs(loader._lane[0])  # the packing stream alone (no token reads / masking)
        real += sum(lens)
        total += seq_len
        for ref, n in zip(refs, lens):
            per_lang[ref[0]] += n - 2
    dt = time.perf_counter() - t
    share = per_lang / per_lang.sum()
    p = loader.plan.as_dict()
    tv = 0.5 * sum(abs(share[loader.all_languages.index(l)] - q) for l, q in p.items())
    return real / total, rows / dt, tv


def loader_throughput(shards: str, seq_len: int, rows: int, steps: int) -> float:
    loader = MLMLoader(shards, StreamPhase(temperature=0.5, mask_rate=0.3, seq_len=seq_len),
                       LoaderSpec(seed=1, rows_per_batch=rows))
    next(loader)
    t, n = time.perf_counter(), 0
    for _ in range(steps):
        n += next(loader)["input_ids"].numel()
    return n / (time.perf_counter() - t)


def per_rank_step(shards: str, seq_len: int, rows: int, world: int, lanes: int, steps: int) -> float:
    """CPU seconds rank 0 of `world` spends making its share of a `rows`-row global batch: with one
    lane it packs all rows (and materialises its own), with lanes = world only its own."""
    loader = MLMLoader(shards, StreamPhase(temperature=0.5, mask_rate=0.3, seq_len=seq_len),
                       LoaderSpec(seed=3, rows_per_batch=rows, lanes=lanes), rank=0, world_size=world)
    loader.next_batch()
    t = time.process_time()
    for _ in range(steps):
        loader.next_batch()
    return (time.process_time() - t) / steps


def model_throughput(shards: str, seq_len: int, rows: int, steps: int) -> float:
    from mmbert import EncoderConfig
    from mmbert.model import build_model

    cfg = EncoderConfig.from_preset("tiny")
    model = build_model(cfg, head="mlm")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = MLMLoader(shards, StreamPhase(temperature=0.5, mask_rate=0.3, seq_len=seq_len),
                       LoaderSpec(seed=2, rows_per_batch=rows, vocab_size=cfg.vocab_size))
    batches = [next(loader) for _ in range(steps + 1)]

    def step(b):
        out = model(input_ids=b["input_ids"], cu_seqlens=b["cu_seqlens"], max_seqlen=b["max_seqlen"],
                    position_ids=b["position_ids"], labels=b["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])                              # warm-up
    t, n = time.perf_counter(), 0
    for b in batches[1:]:
        step(b)
        n += b["input_ids"].numel()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help="shard folder (default: synthetic shards in a temp dir)")
    ap.add_argument("--rows-1024", type=int, default=20000, help="rows for the efficiency run at seq 1024")
    ap.add_argument("--rows-8192", type=int, default=2500, help="rows for the efficiency run at seq 8192")
    ap.add_argument("--buffer-size", type=int, default=256, help="packer buffer (the loader's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ranks-only", action="store_true", help="only the per-rank packing cost table")
    ap.add_argument("--languages", type=int, default=30, help="languages of the synthetic shards")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.shards is None:
        tmp = tempfile.TemporaryDirectory()
        args.shards = tmp.name
        idx = synthetic(args.shards, args.languages)
        source = f"synthetic ({args.languages} langs, lognormal median 300 σ 1.2)"
    else:
        idx = ShardIndex.load(args.shards)
        source = str(args.shards)
    ntok = sum(idx.tokens(l) for l in idx.languages)
    ndoc = sum(idx.docs(l) for l in idx.languages)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"shards: {source}: {len(idx.languages)} languages, {ndoc:,} docs, {ntok:,} tokens\n")
    if args.ranks_only:
        print("| rank 0 of W, global batch of 512 rows at seq 1024 | CPU s per step, 1 lane | W lanes | ratio |")
        print("|---|---:|---:|---:|")
        for w in (2, 8):
            one, own = per_rank_step(args.shards, 1024, 512, w, 1, 3), per_rank_step(args.shards, 1024, 512, w, w, 3)
            print(f"| W = {w} | {one:.3f} | {own:.3f} | {one / own:.1f}× |")
        if tmp:
            tmp.cleanup()
        return
    print("| measure | seq 1024 | seq 8192 |")
    print("|---|---:|---:|")
    e1, r1, v1 = efficiency(args.shards, 1024, args.rows_1024, args.buffer_size)
    e8, r8, v8 = efficiency(args.shards, 8192, args.rows_8192, args.buffer_size)
    print(f"| packing efficiency (non-pad / all), {args.rows_1024:,} / {args.rows_8192:,} rows, "
          f"buffer {args.buffer_size} | {e1:.4%} | {e8:.4%} |")
    print(f"| language shares vs p (total variation), same rows, τ 0.5 all languages | {v1:.4f} | {v8:.4f} |")
    print(f"| packing alone (rows/s) | {r1:,.0f} | {r8:,.0f} |")
    for b in (64, 1024, 4096):
        if b == args.buffer_size:
            continue
        s1, _, w1 = efficiency(args.shards, 1024, args.rows_1024, b)
        s8, _, w8 = efficiency(args.shards, 8192, args.rows_8192, b)
        print(f"| buffer {b}, for comparison: efficiency / share TV | {s1:.4%} / {w1:.4f} | {s8:.4%} / {w8:.4f} |")
    l1 = loader_throughput(args.shards, 1024, 16, 40)
    l8 = loader_throughput(args.shards, 8192, 2, 40)
    print(f"| loader throughput (tokens/s; 16 / 2 rows per batch) | {l1:,.0f} | {l8:,.0f} |")
    m1 = model_throughput(args.shards, 1024, 4, 5)
    m8 = model_throughput(args.shards, 8192, 1, 3)
    print(f"| tiny model train step (tokens/s; 4 / 1 rows per batch) | {m1:,.0f} | {m8:,.0f} |")
    print(f"| loader / model | {l1 / m1:.0f}× | {l8 / m8:.0f}× |")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
