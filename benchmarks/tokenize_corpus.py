"""Benchmark: tokenize a whole corpus into shards (`mmbert data prepare`) — target ≤ 10 min for the
embedded corpus with a 32k–64k vocabulary on the project machine.

    python benchmarks/tokenize_corpus.py --corpus out/corpus --tokenizer out/tokenizer [--workers 1 2]

Runs `prepare_shards` once per worker count (side by side, same corpus and tokenizer, fresh output
folders) and prints a markdown table with the machine; copy it by hand into
benchmarks/results/tokenize_corpus_<machine>_<yyyymm>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch
        tv = torch.__version__
    except ImportError:
        tv = "n/a"
    import tokenizers
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {tv}, tokenizers {tokenizers.__version__}, "
            f"Python {platform.python_version()}, load average at start {load:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--out", default=None, help="keep the shards of the last run here")
    args = ap.parse_args()

    from mmbert.data.prepare import prepare_shards
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    stats_path = Path(args.corpus) / "stats.json"
    corpus_bytes = (json.loads(stats_path.read_text())["total_bytes"] if stats_path.exists()
                    else sum(p.stat().st_size for p in Path(args.corpus).rglob("*.jsonl")))
    rows = []
    for w in args.workers:
        out = Path(tempfile.mkdtemp(prefix="mmbert-bench-shards-"))
        t0, c0 = time.perf_counter(), os.times()
        res = prepare_shards(args.corpus, args.tokenizer, out, workers=w, progress=True)
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.children_user - c0.children_user) + (c1.system - c0.system) + (
            c1.children_system - c0.children_system)
        toks = sum(c["train"]["tokens"] + c.get("heldout", {}).get("tokens", 0) for c in res["languages"].values())
        docs = sum(c["train"]["docs"] + c.get("heldout", {}).get("docs", 0) for c in res["languages"].values())
        rows.append((w, len(res["languages"]), docs, corpus_bytes, toks, wall, cpu))
        if args.out and w == args.workers[-1]:
            shutil.rmtree(args.out, ignore_errors=True)
            shutil.move(str(out), args.out)
        else:
            shutil.rmtree(out, ignore_errors=True)

    print(f"\n## Tokenizing the corpus into shards ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    print(f"Machine: {machine()}  ")
    print(f"Corpus: {args.corpus} ({corpus_bytes / 1e6:.1f} MB of text); tokenizer: {args.tokenizer} "
          f"(vocab {tok.vocab_size})\n")
    print("| workers | languages | documents | text MB | tokens (M) | wall s | CPU s | MB/s (wall) | tokens/byte |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, nl, nd, b, t, wall, cpu in rows:
        print(f"| {w} | {nl} | {nd} | {b / 1e6:.1f} | {t / 1e6:.2f} | {wall:.1f} | {cpu:.1f} | "
              f"{b / 1e6 / wall:.2f} | {t / b:.3f} |")


if __name__ == "__main__":
    main()
