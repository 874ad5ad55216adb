"""CPU inference levers beyond the dtype (issue 15): torch.compile of the encoder layers, an int8
path of our own, GEMM kernels, and the local-attention band — each against eager, interleaved
round by round in one process (so load from other jobs hits every variant alike), medians.

    python benchmarks/cpu_levers.py compile --layers 3 --variants bf16,bf16_layer,fp32,fp32_layer
    python benchmarks/cpu_levers.py int8 --layers 3            # fp32 / bf16 / embed(dtype="int8")
    python benchmarks/cpu_levers.py gemm                       # [2048,384]x[384,N]: fp32, bf16, int8
    python benchmarks/cpu_levers.py attention                  # local band and global buckets

Workload: mmbert-small's width (random weights; `--layers` keeps 1 global + local layers in the
preset's pattern), documents ~ N(256, 64) sorted by length and cut into ≤ 2048-token packed
batches (what `embed` does), 1 thread by default. Compile variants: `_layer` = each
EncoderLayer compiled (`layer.compile(dynamic=True)`: one graph per layer kind, recompiles bounded
by the symbolic token count; global layers break the graph at the bucket scatter), `_mlp` = only
the MLPs (what `embed(compile=True)` does), `_freeze` = inductor's freezing (weights folded as
constants, oneDNN-prepacked linears) for that variant. Prints a markdown table; results in
benchmarks/results/cpu_levers_<machine>_<yyyymm>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time

import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn.functional as F

from attention_cpu import interleaved  # median s per variant, round by round (benchmarks/ on sys.path)

from mmbert import EncoderConfig
from mmbert.apps.bench import make_batches, set_lengths
from mmbert.inference import cpu_model, pack, prepare
from mmbert.model import build_model


def encoder_workload(layers: int, docs: int):
    torch.manual_seed(0)
    cfg = EncoderConfig.from_preset("mmbert-small", num_hidden_layers=layers)
    model = build_model(cfg, head="none").eval()
    batches = make_batches(set_lengths("normal256", docs), cfg.vocab_size, 2048, by_length=True)
    packs = [pack(b, torch.device("cpu")) for b in batches]

    def run(m):
        return torch.cat([m(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state.float()
                          for p in packs])
    return model, run, sum(int(p.input_ids.numel()) for p in packs)


def cmd_models(args, variants: dict) -> list[str]:
    """Time whole-model variants {name: (model, context manager factory)}; rows of a markdown table."""
    _, run, ntok = encoder_workload(args.layers, args.docs)
    rows, outs, first = [], {}, {}
    with torch.inference_mode():
        for name, (m, ctx) in variants.items():
            t = time.perf_counter()
            with ctx():
                outs[name] = run(m)
            first[name] = time.perf_counter() - t
        def call(m, ctx):
            with ctx():
                return run(m)

        sec = interleaved({name: (lambda m=m, ctx=ctx: call(m, ctx)) for name, (m, ctx) in variants.items()},
                          args.rounds)
    base = next(iter(variants))
    rows.append(f"| variant | tokens/s | ÷ {base} | first pass (s, incl. compile) | min token cosine to fp32 |")
    rows.append("|---|---:|---:|---:|---:|")
    ref = outs.get("fp32", outs[base]).double()
    for name in variants:
        cos = F.cosine_similarity(outs[name].double(), ref).min().item()
        rows.append(f"| {name} | {ntok / sec[name]:.0f} | {sec[base] / sec[name]:.2f}× | {first[name]:.1f} | {cos:.5f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("compile", "int8", "gemm", "attention"))
    ap.add_argument("--layers", type=int, default=3, help="encoder layers (mmbert-small has 22)")
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="bf16,bf16_layer,fp32,fp32_layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}\n")
    if args.what in ("compile", "int8"):
        model, _, _ = encoder_workload(args.layers, args.docs)
        if args.what == "int8":
            variants = {"bf16": (prepare(model, torch.bfloat16), contextlib.nullcontext),
                        "fp32": (model, contextlib.nullcontext),
                        "int8": (prepare(model, torch.qint8), contextlib.nullcontext)}
        else:
            torch._dynamo.config.cache_size_limit = 64
            variants = {}
            for v in args.variants.split(","):
                m = copy.deepcopy(model).to(torch.bfloat16 if v.startswith("bf16") else torch.float32)
                for layer in m.layers:
                    if "_layer" in v:
                        layer.compile(dynamic=True)
                    elif "_mlp" in v:
                        layer.mlp.compile(dynamic=True)
                freeze = "_freeze" in v
                variants[v] = (m, lambda freeze=freeze: inductor_config.patch(freezing=freeze))
        rows = cmd_models(args, variants)
    elif args.what == "gemm":
        rows = gemm_rows(args.rounds)
    else:
        rows = attention_rows(args.rounds)
    print("\n".join(rows))
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


def gemm_rows(rounds: int) -> list[str]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    M, K = 2048, 384
    x = torch.randn(M, K)
    fns, flops = {}, {}
    for N in (1152, 384):
        w = torch.randn(N, K) * 0.05
        q = DynamicInt8Linear(K, N, bias_=False)
        q.set_weight_bias(torch.quantize_per_tensor(w, 0.05 / 64, 0, torch.qint8), None)
        a8 = torch.randint(-127, 127, (M, K), dtype=torch.int8)
        b8 = torch.randint(-127, 127, (K, N), dtype=torch.int8)
        fns.update({f"fp32 linear N={N}": lambda x=x, w=w: F.linear(x, w),
                    f"bf16 linear N={N}": lambda x=x.bfloat16(), w=w.bfloat16(): F.linear(x, w),
                    f"int8 torch._int_mm N={N}": lambda a=a8, b=b8: torch._int_mm(a, b),
                    f"int8 dynamic Linear (fp32 in/out) N={N}": lambda x=x, q=q: q(x)})
    for k in fns:
        fns[k]()
        flops[k] = 2 * M * K * int(k.rsplit("=", 1)[1])
    sec = interleaved(fns, rounds)
    return ["| GEMM [2048,384]×[384,N] | ms | GFLOP/s |", "|---|---:|---:|"] + [
        f"| {k} | {sec[k] * 1e3:.1f} | {flops[k] / sec[k] / 1e9:.1f} |" for k in fns]


def attention_rows(rounds: int) -> list[str]:
    from attention_cpu import band_mask  # the 64-query-block mask this section was written for

    from mmbert.model.attention import AttentionPlan, _varlen

    torch.manual_seed(0)
    lengths = [300, 280, 260, 250, 240, 230, 220, 200]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    N, h, d, w = int(cu[-1]), 6, 64, 64  # mmbert-small: 6 heads of 64, window 128 → w 64
    plan = AttentionPlan.for_packed(cu, max(lengths), "varlen", w, torch.device("cpu"))
    mask64 = band_mask(plan, w)  # (attention.py now uses 32-query blocks: benchmarks/attention_cpu.py)
    nb = mask64.shape[0]
    rows = ["| dtype | attention over 8 docs (1980 tokens), one layer | ms |", "|---|---|---:|"]
    for dt in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(N, h, d).to(dt) for _ in range(3))
        additive = torch.zeros(mask64.shape, dtype=dt).masked_fill(~mask64, float("-inf"))

        def band(scores_by_hand=False, mask=mask64):
            qp = F.pad(q, (0, 0, 0, 0, 0, nb * w - N)).view(nb, w, h, d).transpose(1, 2)
            kp = F.pad(k, (0, 0, 0, 0, w, nb * w - N + w)).unfold(0, 3 * w, w)[:nb].permute(0, 1, 3, 2)
            vp = F.pad(v, (0, 0, 0, 0, w, nb * w - N + w)).unfold(0, 3 * w, w)[:nb].permute(0, 1, 3, 2)
            if scores_by_hand:  # matmul + float32 softmax + matmul
                s = torch.matmul(qp * d ** -0.5, kp.transpose(-1, -2)) + additive
                return torch.matmul(s.softmax(-1, dtype=torch.float32).to(dt), vp)
            return F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=d ** -0.5)

        fns = {"local band, SDPA bool mask (64-query blocks, before attention_cpu.py)": band,
               "local band, SDPA additive mask": lambda: band(mask=additive),
               "local band, matmul + fp32 softmax": lambda: band(scores_by_hand=True),
               "global, current (per-document SDPA on CPU)": lambda: _varlen(q, k, v, plan, False, 0.0, d ** -0.5)}
        for f in fns.values():
            f()
        sec = interleaved(fns, rounds)
        rows += [f"| {str(dt).replace('torch.', '')} | {k} | {sec[k] * 1e3:.1f} |" for k in fns]
    return rows


if __name__ == "__main__":
    main()
