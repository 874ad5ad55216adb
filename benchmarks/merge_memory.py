"""Peak memory and time of `mmbert.merge` against the size of one model (claim: ≈ two models).

Writes N random checkpoints of a preset's shape (fp32) into a temporary directory, then runs each
merge method in a fresh subprocess and reports its peak resident memory (ru_maxrss) next to the
size of one model's weights, as a markdown table.

    .venv/bin/python benchmarks/merge_memory.py                  # tiny shape, 256k vocab (136 MB)
    .venv/bin/python benchmarks/merge_memory.py --preset mmbert-base --vocab 256000 --models 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from mmbert import EncoderConfig


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, root: str, n: int) -> None:
    """One merge; ru_maxrss counts the memory-mapped input pages too (reclaimable page cache),
    so the private (anonymous) memory is sampled every 2 ms as well."""
    from mmbert.merge import merge

    root_p = Path(root)
    start_anon = _rss_anon_mb()
    peak = [start_anon]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_mb())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.time()
    kw = {"base": root_p / "base", "density": 0.5} if method == "ties" else {}
    merge([root_p / f"m{i}" for i in range(n)], root_p / f"out-{method}", method=method,
          progress=False, overwrite=True, **kw)
    seconds = time.time() - t
    done.set()
    th.join()
    print(json.dumps({"seconds": seconds, "maxrss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "anon_start_mb": start_anon, "anon_peak_mb": peak[0]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=256000, help="mmBERT's; the embedding dominates")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    from mmbert.export.hf import to_hf_state_dict
    from mmbert.model import build_model
    from safetensors.torch import save_file

    cfg = EncoderConfig.from_preset(args.preset, vocab_size=args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        sd = to_hf_state_dict(build_model(cfg, init=False))
        size_mb = sum(t.numel() * 4 for t in sd.values()) / 2**20
        for name in ["base"] + [f"m{i}" for i in range(args.models)]:
            d = Path(tmp) / name
            d.mkdir()
            save_file({k: torch.randn(v.shape) for k, v in sd.items()}, str(d / "model.safetensors"),
                      metadata={"format": "pt"})
            (d / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
        del sd
        rows = []
        for method in ("linear", "ema", "ties"):
            out = subprocess.run([sys.executable, __file__, "--child", method, tmp, str(args.models)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append((method, r))
    print(f"\n## mmbert.merge memory: {args.models} models of {args.preset} shape, vocab {args.vocab}, "
          f"fp32 ({size_mb:.0f} MB each)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}. "
          f"maxrss includes memory-mapped input pages (page cache); anon = private memory, sampled "
          f"every 2 ms, minus what the interpreter held before the merge.\n")
    print("| method | seconds | maxrss MB | peak anon − start MB | ÷ model size |")
    print("|---|---|---|---|---|")
    for method, r in rows:
        extra = r["anon_peak_mb"] - r["anon_start_mb"]
        print(f"| {method} | {r['seconds']:.1f} | {r['maxrss_mb']:.0f} | {extra:.0f} | "
              f"{extra / size_mb:.2f} |")

if __name__ == "__main__":
    main()
