"""Time the eval suites on the tiny preset and record the random-init floor (vs a trained model).

    python benchmarks/eval_suite.py --out out/eval-bench --suites quick full
    python benchmarks/eval_suite.py --out out/eval-bench --trained out/cpu-demo/export/decay-cont

With --trained, a randomly initialised model of the SAME config and tokenizer is evaluated next to it
(the floor), so the table shows whether the harness separates them. Without it, a random tiny-preset
model is built with --tokenizer, or with a stand-in tokenizer (32,768 BPE trained on SIB-200 *train*
sentences of the eval data; only segmentation depends on it, the model itself never sees any text).
Prints a markdown table (task averages and seconds per suite) plus the machine; results/*.md are
copied from it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def stand_in_tokenizer(out: Path, data_dir: Path | None) -> Path:
    from mmbert.eval import data as D
    from mmbert.tokenizer import train_tokenizer_from_texts

    d = out / "stand-in-tokenizer"
    if (d / "tokenizer.json").exists():
        return d
    root = D.resolve_data_dir(data_dir)
    texts = [e.text for lang in D.sib200_languages(root) for e in D.load_sib200(root, lang, "train")]
    train_tokenizer_from_texts(texts, 32768).save(d)
    return d


def random_model(out: Path, tokenizer_dir: Path, like: Path | None) -> Path:
    import mmbert
    from mmbert.export.hf import save_pretrained
    from mmbert.model import build_model
    from mmbert.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    if like is not None:
        from mmbert.export.hf import read_config

        cfg = read_config(like)
    else:
        cfg = mmbert.EncoderConfig.from_preset("tiny")
        if tok.vocab_size > cfg.vocab_size:
            cfg = cfg.replace(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg, head="mlm")
    model.tokenizer = tok
    d = out / "random-init"
    save_pretrained(model, d)
    return d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/eval-bench")
    p.add_argument("--trained", default=None, help="a trained model directory (e.g. the cpu-demo export)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir for the random model (default: the "
                                                     "trained model's, else a stand-in)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--shards", default=None, help="held-out shards for the MLM task (tokenizer must match)")
    p.add_argument("--suites", nargs="+", default=["quick", "full"])
    p.add_argument("--num-seeds", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks (split a long "
                                                 "suite over several processes; CPU seconds stay comparable)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmbert.eval.runner import run_suite

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = Path(args.trained) if args.trained else None
    tok = Path(args.tokenizer) if args.tokenizer else (trained or stand_in_tokenizer(out, args.data_dir))
    d = out / "random-init"
    models = {"random-init": d if (d / "config.json").exists() and args.tasks else random_model(out, tok, trained)}
    if trained is not None:
        models = {"trained": trained, **models}
    rows, load = [], []
    for suite in args.suites:
        for name, path in models.items():
            seeds = range(args.num_seeds) if args.num_seeds else None
            load.append(os.getloadavg()[0])
            tag = f"-{args.tasks.replace(',', '+')}" if args.tasks else ""
            res = run_suite(path, suite, data_dir=args.data_dir, out_dir=out / f"{suite}-{name}{tag}", seeds=seeds,
                            shards=args.shards, progress=True,
                            tokenizer=args.tokenizer if name == "trained" else None,
                            tasks=args.tasks.split(",") if args.tasks else None)
            load.append(os.getloadavg()[0])
            for task, r in res["tasks"].items():
                avg = r.get("average", {})
                val = (f"{100 * avg['mean']:.1f} ± {100 * avg['std']:.1f}" if avg.get("std") else
                       f"{100 * avg['mean']:.1f}") if avg.get("mean") is not None else r.get("skipped", r.get("error", "–"))
                rows.append((suite, name, task, val, r["seconds"], r["cpu_seconds"]))
            rows.append((suite, name, "**total**", "", res["seconds"], res["cpu_seconds"]))
            (out / "summary.json").write_text(json.dumps(rows, indent=1))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"1-min load average during runs {min(load):.1f}–{max(load):.1f}")
    print(f"models: {', '.join(f'{k} = {v}' for k, v in models.items())}; tokenizer {tok}\n")
    print("| suite | model | task | average ×100 (mean ± std over seeds) | wall s | CPU s |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
