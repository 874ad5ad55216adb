"""Attention backends on CPU (issue 2): which packed/variable-length implementation to keep.

    python benchmarks/attention_backends.py            # both parts, ~5 min on a 2-core Xeon
    python benchmarks/attention_backends.py --no-flex  # skip FlexAttention (its compile is slow)

Part 1 — whole-model forward throughput (tokens/s, fp32 and bf16) of the three CPU backends on the
same documents (lengths ~ Normal(256, 64)): "eager" and "sdpa" on a batch padded to its longest
member, "varlen" packed (no compute on padding).

Part 2 — one attention call on the packed layout (q, k, v [N, heads, head_dim], documents back to
back), global and sliding-window, for mmbert-small's heads (6 × 64), window ±64:
- varlen: ours (model/attention.py: per-document SDPA calls for global, banded blocks for local);
- per-doc SDPA: a Python loop, one SDPA call per document (band mask per document when local);
- block-diagonal: one SDPA call over the whole stream with a [N, N] document (∧ band) mask;
- flex: torch.nn.attention.flex_attention with a document (∧ window) BlockMask, torch.compile'd
  (compile time reported separately, not in the throughput).
Prints markdown; results/attention_backends_<machine>_<yyyymm>.md records a run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from mmbert import EncoderConfig
from mmbert.apps.bench import machine_info
from mmbert.inference import default_threads
from mmbert.model import build_model
from mmbert.model.attention import AttentionPlan, attention


def _median_time(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def lengths_normal(n: int, mean: int, std: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    g = random.Random(seed)
    return [min(hi, max(lo, round(g.gauss(mean, std)))) for _ in range(n)]


# ----------------------------------------------------------------------------- part 1: whole model
@torch.inference_mode()
def model_backends(preset: str, n_docs: int, dtype: torch.dtype) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = EncoderConfig.from_preset(preset)
    model = build_model(cfg, head="none").eval().to(dtype)
    lengths = lengths_normal(n_docs, 256, 64, 16, 512)
    docs = [torch.randint(5, cfg.vocab_size, (n,)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(docs), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, d in enumerate(docs):
        ids[i, :len(d)], mask[i, :len(d)] = d, 1
    flat = torch.cat(docs)
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    runs = {"eager (padded)": lambda: model(ids, mask, backend="eager"),
            "sdpa (padded)": lambda: model(ids, mask, backend="sdpa"),
            "varlen (packed)": lambda: model(flat, cu_seqlens=cu, max_seqlen=T, backend="varlen")}
    return {name: sum(lengths) / _median_time(fn) for name, fn in runs.items()}


# ----------------------------------------------------------------------------- part 2: attention only
def per_doc_sdpa(q, k, v, cu: list[int], window: int | None):
    outs = []
    for a, b in zip(cu[:-1], cu[1:]):
        qd, kd, vd = (x[a:b].transpose(0, 1) for x in (q, k, v))  # [h, L, d]
        m = None
        if window is not None:
            i = torch.arange(b - a)
            m = (i[:, None] - i[None, :]).abs() <= window
        outs.append(F.scaled_dot_product_attention(qd, kd, vd, attn_mask=m).transpose(0, 1))
    return torch.cat(outs).flatten(1)


def block_diagonal(q, k, v, doc: torch.Tensor, window: int | None):
    m = doc[:, None] == doc[None, :]
    if window is not None:
        i = torch.arange(len(doc))
        m &= (i[:, None] - i[None, :]).abs() <= window
    out = F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), attn_mask=m)
    return out[0].transpose(0, 1).flatten(1)


def make_flex(doc: torch.Tensor, window: int | None, N: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if window is None:
        def mask_mod(b, h, qi, kv):
            return doc[qi] == doc[kv]
    else:
        def mask_mod(b, h, qi, kv):
            return (doc[qi] == doc[kv]) & ((qi - kv).abs() <= window)
    block_mask = create_block_mask(mask_mod, None, None, N, N, device="cpu")
    compiled = torch.compile(flex_attention)

    def run(q, k, v):
        out = compiled(*(x.transpose(0, 1)[None] for x in (q, k, v)), block_mask=block_mask)
        return out[0].transpose(0, 1).flatten(1)

    return run


@torch.inference_mode()
def packed_attention(lengths: list[int], heads: int, head_dim: int, window: int, dtype: torch.dtype,
                     flex: bool) -> dict[str, dict]:
    N = sum(lengths)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(N, heads, head_dim, generator=g).to(dtype) for _ in range(3))
    cu_t = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    cu = cu_t.tolist()
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    plan = AttentionPlan.for_packed(cu_t, max(lengths), "varlen", window, torch.device("cpu"))
    res: dict[str, dict] = {}
    for local in (False, True):
        w = window if local else None
        ref = per_doc_sdpa(q, k, v, cu, w)
        fns = {"varlen (ours)": lambda: attention(q, k, v, plan, local=local),
               "per-doc SDPA": lambda: per_doc_sdpa(q, k, v, cu, w),
               "block-diagonal mask": lambda: block_diagonal(q, k, v, doc, w)}
        if flex:
            try:
                t = time.perf_counter()
                run = make_flex(doc, w, N)
                out = run(q, k, v)
                compile_s = time.perf_counter() - t
                torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
                fns["flex (compiled)"] = lambda: run(q, k, v)
                res.setdefault("flex compile s", {})["local" if local else "global"] = compile_s
            except Exception as e:  # record why it is n/a rather than crash the table
                res.setdefault("flex error", {})["local" if local else "global"] = f"{type(e).__name__}: {e}"[:200]
        for name, fn in fns.items():
            out = fn()
            torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)  # same maths
            res.setdefault(name, {})["local" if local else "global"] = N / _median_time(fn)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--docs", type=int, default=16, help="documents per batch in part 1")
    args = ap.parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    m = machine_info(threads)
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({threads} threads), torch {m['torch']}, {m['date']}, "
          f"load average at start {m['load_avg_1m_at_start']}\n")

    print("## Whole-model forward, tokens/s (lengths ~ N(256, 64), "
          f"{args.docs} documents)\n")
    print("| preset | dtype | eager (padded) | sdpa (padded) | varlen (packed) | varlen ÷ sdpa |")
    print("|---|---|---|---|---|---|")
    for preset in ("tiny", "mmbert-small"):
        for dtype in (torch.float32, torch.bfloat16):
            r = model_backends(preset, args.docs, dtype)
            vals = list(r.values())
            print(f"| {preset} | {str(dtype)[6:]} | " + " | ".join(f"{x:.0f}" for x in vals)
                  + f" | {vals[2] / vals[1]:.2f}× |", flush=True)

    print("\n## One attention call on the packed layout, tokens/s (6 heads × 64, window ±64)\n")
    cases = {"N(256,64) × 32 docs": lengths_normal(32, 256, 64, 16, 512),
             "N(4096,1024) × 2 docs": lengths_normal(2, 4096, 1024, 64, 8192)}
    for dtype in (torch.float32, torch.bfloat16):
        for case, lengths in cases.items():
            res = packed_attention(lengths, 6, 64, 64, dtype, flex=not args.no_flex)
            print(f"\n{case}, {sum(lengths)} tokens, {str(dtype)[6:]}\n")
            print("| implementation | global | local (sliding window) |")
            print("|---|---|---|")
            for name, r in res.items():
                if name in ("flex compile s", "flex error"):
                    print(f"| {name} | {r.get('global', '')} | {r.get('local', '')} |")
                else:
                    print(f"| {name} | {r.get('global', float('nan')):.0f} | {r.get('local', float('nan')):.0f} |")
            print(flush=True)


if __name__ == "__main__":
    main()
