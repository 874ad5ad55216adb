"""Training throughput: our packed loop vs transformers' ModernBertForMaskedLM on padded batches.

    .venv/bin/python benchmarks/train_throughput.py --preset tiny --seq-len 512 --rows 8 --steps 8 --threads 1
    .venv/bin/python benchmarks/train_throughput.py --preset mmbert-small --device cuda --rows 64 --steps 20

Same model shape (preset, vocabulary), same documents in the same order, same mask rate, same
optimizer (StableAdamW) and the same number of real (non-pad) tokens per optimizer step:
  ours      documents chunked + best-fit packed into rows of seq_len, one flat unpadded batch
            (cu_seqlens; varlen attention, or flash-attn on CUDA), sparse prediction (only masked
            tokens are decoded), loss / masked-token count — `mmbert.step.train_step`.
  hf        transformers ModernBertForMaskedLM as a user trains it: documents (truncated to seq_len)
            in padded batches, SDPA attention, default config (logits for every position).
  hf-sparse the same with `sparse_prediction=True` (ModernBERT's own training setting).
Throughput = real tokens (documents + <bos>/<eos>, no padding) per second over the timed steps.
On CUDA both run under bf16 autocast. Prints a markdown table (copy it to benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def make_docs(n: int, vocab: int, median: float, sigma: float, seq_len: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(median), sigma, size=n).astype(int), 8, 4 * seq_len)
    return [rng.integers(5, vocab, size=int(k)) for k in lens]


def cpu_name() -> str:
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rows", type=int, default=8, help="packed rows per step (ours); HF gets the same real tokens")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--mask-rate", type=float, default=0.3)
    ap.add_argument("--median-doc", type=float, default=200.0, help="median document length (lognormal, σ 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default="ours,hf,hf-sparse")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from optimi import StableAdamW

    from mmbert import EncoderConfig
    from mmbert.data.masking import mask_tokens
    from mmbert.model import build_model
    from mmbert.train.optim import build_optimizer
    from mmbert.step import mlm_loss_fn, train_step

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from packing_ref import pack_documents  # tests/packing_ref.py: the finite-list packer the packing tests check

    dev = torch.device(args.device)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    cfg = EncoderConfig.from_preset(args.preset, vocab_size=args.vocab,
                                    max_position_embeddings=max(args.seq_len, 512))
    specials = [0, 1, 2, 3, 4]
    S, R, total_steps = args.seq_len, args.rows, args.steps + 2
    docs = make_docs(R * S * total_steps // int(args.median_doc) * 3, args.vocab, args.median_doc, 1.0, S, 0)
    rows = pack_documents(docs, S)
    g = torch.Generator().manual_seed(0)

    # ---- ours: R packed rows per step
    ours_batches, real_per_step = [], []
    for k in range(total_steps):
        chunk = rows[k * R:(k + 1) * R]
        ids = torch.from_numpy(np.concatenate([r.input_ids for r in chunk]))
        cu = np.concatenate([[0]] + [r.cu_seqlens[1:] + i * S for i, r in enumerate(chunk)]).astype(np.int32)
        pos = torch.from_numpy(np.concatenate([r.position_ids for r in chunk]).astype(np.int64))
        inp, labels = mask_tokens(ids, args.mask_rate, special_ids=specials, vocab_size=args.vocab, mask_id=4,
                                  generator=g)
        labels[ids == 0] = -100
        cu_t = torch.from_numpy(cu)
        ours_batches.append({"input_ids": inp, "labels": labels, "cu_seqlens": cu_t, "position_ids": pos,
                             "max_seqlen": int((cu_t[1:] - cu_t[:-1]).max())})
        real_per_step.append(int((ids != 0).sum()))

    # ---- hf: the same documents, framed and truncated, padded batches of about the same real tokens
    framed = [np.concatenate([[2], d[:S - 2], [1]]) for d in docs]
    hf_batches, i = [], 0
    for k in range(total_steps):
        batch, n = [], 0
        while n < real_per_step[k] and i < len(framed):
            batch.append(framed[i])
            n += len(framed[i])
            i += 1
        T = max(len(b) for b in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        att = torch.zeros(len(batch), T, dtype=torch.long)
        for j, b in enumerate(batch):
            ids[j, :len(b)] = torch.from_numpy(b)
            att[j, :len(b)] = 1
        inp, labels = mask_tokens(ids, args.mask_rate, special_ids=specials, vocab_size=args.vocab, mask_id=4,
                                  generator=g)
        hf_batches.append((inp, att, labels, n))

    results = []

    def timed(name, step_fn, n_real):
        for k in range(2):
            step_fn(k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for k in range(2, total_steps):
            step_fn(k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        toks = sum(n_real[2:total_steps])
        results.append((name, toks / dt, dt / args.steps))
        print(f"{name}: {toks / dt:,.0f} real tokens/s", flush=True)

    only = args.only.split(",")
    if "ours" in only:
        torch.manual_seed(0)
        model = build_model(cfg).to(dev)
        opt = build_optimizer(model, lr=1e-4, weight_decay=0.0)
        timed("ours (packed, varlen/flash, sparse prediction)",
              lambda k: train_step(model, opt, [ours_batches[k]], mlm_loss_fn, autocast_dtype=amp), real_per_step)
        del model, opt

    def hf_run(name, sparse):
        hcfg = transformers.ModernBertConfig(**{**cfg.to_hf_dict(), "sparse_prediction": sparse})
        torch.manual_seed(0)
        model = transformers.ModernBertForMaskedLM._from_config(hcfg, attn_implementation="sdpa").to(dev)
        model.train()
        opt = StableAdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

        def step(k):
            inp, att, labels, _ = hf_batches[k]
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                out = model(input_ids=inp.to(dev), attention_mask=att.to(dev), labels=labels.to(dev))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        timed(name, step, [b[3] for b in hf_batches])

    if "hf" in only:
        hf_run("transformers ModernBertForMaskedLM (padded, sdpa)", False)
    if "hf-sparse" in only:
        hf_run("transformers ModernBertForMaskedLM (padded, sdpa, sparse_prediction)", True)

    pad_frac = 1 - sum(b[3] for b in hf_batches) / sum(b[0].numel() for b in hf_batches)
    print()
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads"
          + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "")
          + f"; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Preset {args.preset} (vocab {args.vocab}, {cfg.num_parameters():,} params), seq_len {S}, "
          f"{R} rows ≈ {sum(real_per_step) // total_steps:,} real tokens/step, mask {args.mask_rate}, "
          f"lognormal docs (median {args.median_doc:g}); HF batches are {pad_frac:.0%} padding.")
    print()
    print("| loop | real tokens/s | s/step | vs transformers (padded) |")
    print("|---|---:|---:|---:|")
    base = next((r[1] for r in results if r[0].endswith("(padded, sdpa)")), None)
    for name, tps, sps in results:
        print(f"| {name} | {tps:,.0f} | {sps:.3f} | {tps / base:.2f}× |" if base else f"| {name} | {tps:,.0f} | {sps:.3f} | - |")


if __name__ == "__main__":
    main()
