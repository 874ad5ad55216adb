"""Packed ("varlen") attention on CPU (issue 15): the current code against its previous version.

    python benchmarks/attention_cpu.py                 # ~8 min at 1 thread on a 2-core EPYC
    python benchmarks/attention_cpu.py --model-rounds 11 --docs 16

Previous version (kept below, only to measure against): global layers gather documents into
length buckets (≤1.25× padding, a bool mask, a scatter back); local layers cut the stream into
blocks of w queries that see 3w keys under a bool band mask. Current (model/attention.py): one
SDPA call per document on global layers; blocks of w/2 queries that see 2.5w keys under an
additive mask built once per plan on local layers. Part 1 times one attention call (mmbert-small's
6 heads × 64, window ±64) on packed documents, with single changes in between, fp32 and bf16;
part 2 a whole mmbert-small forward (22 layers) in fp32 and int8 (`inference.prepare(model,
torch.qint8)`), previous vs current swapped in by replacing `attention._varlen`. Rounds are
interleaved (every variant once per round), medians reported; malloc tuned as `mmbert` does.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from attention_backends import lengths_normal  # (benchmarks/ is on sys.path)

from mmbert import EncoderConfig
from mmbert.allocator import tune_malloc
from mmbert.apps.bench import machine_info
from mmbert.inference import prepare
from mmbert.model import attention as attn_mod
from mmbert.model import build_model
from mmbert.model.attention import AttentionPlan, _length_buckets

H, D, W = 6, 64, 64  # mmbert-small: 6 heads of 64, local_attention 128 → half window 64


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per variant over `rounds`, every variant run once per round."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- previous version
def band_mask(plan: AttentionPlan, b: int) -> torch.Tensor:
    """[nb, 1, b, b + 2w] bool: blocks of b queries, |i − j| ≤ w ∧ same document."""
    key = ("bench band", b)
    if key not in plan._masks:
        w, n = plan.window, len(plan.doc_ids)
        nb = max(1, math.ceil(n / b))
        pad_doc = torch.full((nb * b + 2 * w,), -1, dtype=torch.long)
        pad_doc[w:w + n] = plan.doc_ids
        q_doc, k_doc = pad_doc[w:w + nb * b].view(nb, b), pad_doc.unfold(0, b + 2 * w, b)[:nb]
        band = (torch.arange(b)[:, None] - torch.arange(b + 2 * w)[None, :] + w).abs() <= w
        plan._masks[key] = (band[None] & (q_doc[:, :, None] == k_doc[:, None, :]))[:, None]
    return plan._masks[key]


def local_band(q, k, v, plan: AttentionPlan, b: int, additive: bool) -> torch.Tensor:
    N, h, d = q.shape
    w, mask = plan.window, band_mask(plan, b)
    if additive:
        mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))  # built per call here
    nb = mask.shape[0]
    qp = F.pad(q, (0, 0, 0, 0, 0, nb * b - N)).view(nb, b, h, d).transpose(1, 2)
    kp = F.pad(k, (0, 0, 0, 0, w, nb * b - N + w)).unfold(0, b + 2 * w, b)[:nb].permute(0, 1, 3, 2)
    vp = F.pad(v, (0, 0, 0, 0, w, nb * b - N + w)).unfold(0, b + 2 * w, b)[:nb].permute(0, 1, 3, 2)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=d ** -0.5)
    return out.transpose(1, 2).reshape(nb * b, h * d)[:N]


def global_buckets(q, k, v, plan: AttentionPlan) -> torch.Tensor:
    N, h, d = q.shape
    if "bench buckets" not in plan._masks:
        plan._masks["bench buckets"] = _length_buckets(plan.cu_seqlens.long(), q.device)
    out = q.new_empty(N, h * d)
    zero = q.new_zeros(1, h, d)
    qz, kz, vz = (torch.cat([x, zero]) for x in (q, k, v))
    for idx, valid, full in plan._masks["bench buckets"]:
        qb, kb, vb = (x[idx].transpose(1, 2) for x in (qz, kz, vz))
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=None if full else valid[:, None, None, :],
                                            scale=d ** -0.5)
        out[idx[valid]] = ob.transpose(1, 2).reshape(idx.shape[0], idx.shape[1], h * d)[valid]
    return out


def previous_varlen(q, k, v, plan, local, dropout_p, scale):
    if plan.uniform_length:  # unchanged fixed-length fast path
        return current_varlen(q, k, v, plan, local, dropout_p, scale)
    return local_band(q, k, v, plan, plan.window, False) if local else global_buckets(q, k, v, plan)


current_varlen = attn_mod._varlen


# ----------------------------------------------------------------------------- part 1: one call
@torch.inference_mode()
def attention_calls(lengths: list[int], dtype: torch.dtype, rounds: int) -> list[str]:
    N = sum(lengths)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(N, H, D, generator=g).to(dtype) for _ in range(3))
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    plan = AttentionPlan.for_packed(cu, max(lengths), "varlen", W, torch.device("cpu"))
    cases = {
        "global": {"previous: length buckets": lambda: global_buckets(q, k, v, plan),
                   "current: one SDPA call per document": lambda: current_varlen(q, k, v, plan, False, 0.0, D ** -0.5)},
        "local": {"previous: blocks of w, 3w keys, bool mask": lambda: local_band(q, k, v, plan, W, False),
                  "blocks of w/4, 2.25w keys, bool mask": lambda: local_band(q, k, v, plan, W // 4, False),
                  "blocks of w/2, 2.5w keys, bool mask": lambda: local_band(q, k, v, plan, W // 2, False),
                  "blocks of w/2, additive mask built per call": lambda: local_band(q, k, v, plan, W // 2, True),
                  "current: blocks of w/2, additive mask built once": lambda: current_varlen(q, k, v, plan, True, 0.0,
                                                                                             D ** -0.5)}}
    rows = []
    for layer, fns in cases.items():
        ref = next(iter(fns.values()))().float()
        for f in fns.values():  # same maths (bf16: one rounding of the output apart)
            torch.testing.assert_close(f().float(), ref, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=0)
        sec = interleaved(fns, rounds)
        base = next(iter(sec.values()))
        rows += [f"| {str(dtype)[6:]} | {layer} | {name} | {s * 1e6 / N:.2f} | {base / s:.2f}× |"
                 for name, s in sec.items()]
    return rows


# ----------------------------------------------------------------------------- part 2: whole model
@torch.inference_mode()
def whole_model(lengths: list[int], rounds: int) -> list[str]:
    torch.manual_seed(0)
    cfg = EncoderConfig.from_preset("mmbert-small")
    fp32 = build_model(cfg, head="none").eval()
    ids = torch.randint(5, cfg.vocab_size, (sum(lengths),))
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    rows, ref = [], None
    for name, model in (("float32", fp32), ("int8", prepare(fp32, torch.qint8))):
        def run(varlen, model=model):
            attn_mod._varlen = varlen
            try:
                return model(ids, cu_seqlens=cu, max_seqlen=max(lengths), backend="varlen").last_hidden_state
            finally:
                attn_mod._varlen = current_varlen

        fns = {"previous": lambda: run(previous_varlen), "current": lambda: run(current_varlen)}
        cur, prev = fns["current"](), fns["previous"]()
        if ref is None:  # float32: rounding apart (≈1e-6 on outputs of magnitude ≤ 3)
            ref = prev
            torch.testing.assert_close(cur, prev, atol=1e-4, rtol=1e-4)
        else:  # int8: a rounding difference can flip an activation's quantisation step, so the two
            # may differ by up to what int8 itself costs against float32, not more
            assert (cur - prev).abs().max() <= (prev - ref).abs().max(), name
        sec = interleaved(fns, rounds)
        rows.append(f"| {name} | {sec['previous'] * 1e6 / len(ids):.0f} | {sec['current'] * 1e6 / len(ids):.0f} | "
                    f"{sec['previous'] / sec['current']:.3f}× |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--docs", type=int, default=8, help="documents of N(256, 64) tokens")
    ap.add_argument("--rounds", type=int, default=15, help="rounds for one attention call")
    ap.add_argument("--model-rounds", type=int, default=7, help="rounds for the whole-model forward")
    args = ap.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    m = machine_info(args.threads)
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({args.threads} threads), torch {m['torch']}, {m['date']}, "
          f"load average at start {m['load_avg_1m_at_start']}\n")
    cases = {f"{args.docs} × N(256,64)": lengths_normal(args.docs, 256, 64, 16, 512),
             "64 × N(48,24)": lengths_normal(64, 48, 24, 4, 512),
             "2 × N(4096,1024)": lengths_normal(2, 4096, 1024, 64, 8192)}
    print("## One attention call, µs per token (6 heads × 64, window ±64)\n")
    for case, lengths in cases.items():
        print(f"\n{case} documents, {sum(lengths)} tokens\n")
        print("| dtype | layer | variant | µs/token | ÷ previous |\n|---|---|---|---:|---:|")
        for dtype in (torch.float32, torch.bfloat16):
            rounds = args.rounds if sum(lengths) < 4000 else max(3, args.rounds // 4)
            print("\n".join(attention_calls(lengths, dtype, rounds)), flush=True)
    lengths = cases[f"{args.docs} × N(256,64)"]
    print(f"\n## Whole mmbert-small forward (22 layers), {args.docs} documents, {sum(lengths)} tokens, µs per token\n")
    print("| dtype | previous | current | speed-up |\n|---|---:|---:|---:|")
    print("\n".join(whole_model(lengths, args.model_rounds)), flush=True)


if __name__ == "__main__":
    main()
