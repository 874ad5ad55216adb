"""GPU throughput: the training loop (bf16 autocast, packed varlen) and inference against
transformers' ModernBERT, on one CUDA device. Prints a markdown table; --json keeps the figures.

    python benchmarks/gpu_train.py --presets mmbert-small mmbert-base --steps 30 --json out/gpu.json

Training runs `mmbert.train.loop.train` itself (no second loop) on synthetic token shards
(document lengths ~ N(600, 300), clipped to [16, 4000]; vocabulary 32,768; 4 languages), one phase
at seq 1024 and mask 30%, for --steps optimizer steps of --batch-rows × 1024 tokens. Tokens/s and
MFU are the loop's own metrics (metrics.jsonl), median over the second half of the steps (the
first steps include CUDA and allocator warm-up; with --compile, compilation).

Inference compares ours (bf16 weights, packed varlen) with transformers' ModernBertModel (bf16,
SDPA, padded batches) on the same weights and the same documents — `mmbert bench`'s normal256 set
(lengths ~ N(256, 64)) and batching, --infer-batch-tokens real tokens per batch: useful tokens
per second, median of 5 passes after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_shards(root: Path, vocab: int = 32768, docs: int = 3000, seed: int = 0) -> Path:
    from mmbert.data.shards import ShardWriter, write_index

    rng = np.random.default_rng(seed)
    counts = {}
    for lang in ("eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn"):
        counts[lang] = {}
        for split, n in (("train", docs), ("heldout", 8)):
            with ShardWriter(root, lang, split, "uint16") as w:
                for _ in range(n):
                    length = int(np.clip(rng.normal(600, 300), 16, 4000))
                    w.add(rng.integers(5, vocab, size=length, dtype=np.int64))
            counts[lang][split] = w.counts
    write_index(root, counts, "uint16", vocab, {"name": "synthetic"})
    return root


def bench_train(preset: str, shards: Path, steps: int, batch_rows: int, micro_tokens: int, compile: bool,
                out: Path) -> dict:
    from mmbert import EncoderConfig
    from mmbert.train.loop import train
    from mmbert.train.recipe import Phase, Recipe

    batch = batch_rows * 1024
    phase = Phase("pretrain", tokens=steps * batch, seq_len=1024, languages="all", temperature=0.7, mask_rate=0.3,
                  global_rope_theta=10_000.0, local_rope_theta=10_000.0, lr_peak=8e-4,
                  lr_warmup_tokens=batch * 2, batch_tokens=batch)
    rec = Recipe(f"gpu-bench-{preset}", phases=(phase,), preset=preset, eval_every_tokens=10 ** 15,
                 checkpoint_every_tokens=10 ** 15, log_every_steps=1)
    cfg = EncoderConfig.from_preset(preset)
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    train(rec, cfg, shards, out, device="cuda", eval=False, progress=False, plots=False,
          micro_batch_tokens=micro_tokens, compile=compile)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("type") == "train"]
    tail = rows[len(rows) // 2:]
    return {"preset": preset, "compile": compile, "steps": len(rows), "batch_tokens": batch,
            "micro_batch_tokens": micro_tokens,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in tail),
            "mfu": statistics.median(r["mfu"] for r in tail) if tail[0].get("mfu") is not None else None,
            "final_loss": rows[-1]["loss"], "wall_s": wall,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


@torch.inference_mode()
def bench_infer(preset: str, batch_tokens: int, n_docs: int = 4096, seed: int = 0) -> dict:
    import transformers

    from mmbert import EncoderConfig
    from mmbert.apps.bench import make_batches, set_lengths
    from mmbert.data.packing import pad_rows
    from mmbert.export.hf import save_pretrained
    from mmbert.inference import pack
    from mmbert.model import build_model

    torch.manual_seed(seed)
    cfg = EncoderConfig.from_preset(preset)
    ours = build_model(cfg, head="none").eval()
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(ours, d)
        hf = transformers.ModernBertModel.from_pretrained(d, attn_implementation="sdpa",
                                                          dtype=torch.bfloat16).cuda().eval()
    ours = ours.to(device="cuda", dtype=torch.bfloat16)
    # the CPU benchmark's documents and batching (mmbert.apps.bench), so the two tables are comparable
    lengths = set_lengths("normal256", n_docs, seed)
    batches = make_batches(lengths, cfg.vocab_size, batch_tokens, seed)
    total = sum(lengths)
    dev = torch.device("cuda")

    def run_ours():
        for b in batches:
            p = pack(b, dev)
            ours(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen)

    def run_hf():
        for b in batches:
            ids, mask = pad_rows(b, cfg.pad_token_id)
            hf(input_ids=ids.to(dev), attention_mask=mask.to(dev))

    res = {}
    for name, fn in (("mmbert_bf16", run_ours), ("hf_modernbert_bf16", run_hf)):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        res[name] = total / statistics.median(times)
    return {"preset": preset, "docs": n_docs, "tokens": total, "batch_tokens": batch_tokens, **res,
            "ratio": res["mmbert_bf16"] / res["hf_modernbert_bf16"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["mmbert-small", "mmbert-base"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-rows", type=int, default=128, help="rows of 1024 tokens per optimizer step")
    p.add_argument("--micro-batch-tokens", type=int, default=65536)
    p.add_argument("--compile", action="store_true", help="also time the loop with torch.compile per layer")
    p.add_argument("--infer-batch-tokens", type=int, default=65536)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_train.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(args.work or tempfile.mkdtemp(prefix="mmbert-gpu-bench-"))
    shards = synthetic_shards(work / "shards")
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    train_rows, infer_rows = [], []
    for preset in args.presets:
        for comp in ((False, True) if args.compile else (False,)):
            r = bench_train(preset, shards, args.steps, args.batch_rows, args.micro_batch_tokens, comp,
                            work / f"run-{preset}-{int(comp)}")
            print(json.dumps(r), flush=True)
            train_rows.append(r)
        r = bench_infer(preset, args.infer_batch_tokens)
        print(json.dumps(r), flush=True)
        infer_rows.append(r)
    print(f"\n{info['gpu']}, torch {info['torch']}, {info['date']}\n")
    print("| preset | compile | batch tokens | micro-batch | train tokens/s | MFU | peak GiB | final loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in train_rows:
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "-"
        print(f"| {r['preset']} | {r['compile']} | {r['batch_tokens']:,} | {r['micro_batch_tokens']:,} | "
              f"{r['tokens_per_s']:,.0f} | {mfu} | {r['peak_mem_gib']:.1f} | {r['final_loss']:.3f} |")
    print("\n| preset | ours bf16 varlen tokens/s | transformers bf16 SDPA padded tokens/s | ratio |")
    print("|---|---:|---:|---:|")
    for r in infer_rows:
        print(f"| {r['preset']} | {r['mmbert_bf16']:,.0f} | {r['hf_modernbert_bf16']:,.0f} | {r['ratio']:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "train": train_rows, "infer": infer_rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
