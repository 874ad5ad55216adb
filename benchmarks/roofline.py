"""The ceiling on encoder tokens/s that this CPU's matrix multiplies allow, per dtype (issue 15).

    PYTHONPATH=src python benchmarks/roofline.py [--preset mmbert-small] [--threads 1] [--tokens 2048]

For each linear layer of one encoder layer (Wqkv, attention Wo, GeGLU Wi, MLP Wo) the same shape is
timed as one GEMM of `--tokens` rows in fp32, bf16 (torch's mkldnn/oneDNN kernels) and int8
(torch's dynamic quantisation, fbgemm VNNI — what `dtype="int8"` runs; its time includes
quantising the activations). The layers' GEMMs are then summed over the model: the time one token
needs in the linear layers alone, if nothing else ran — no attention, norms, RoPE, GELU, embedding.
`ceiling tok/s` = 1 / that time: no implementation of this model in this dtype on this CPU and
thread count can beat it without skipping work. A speed target above every dtype's ceiling (e.g.
issue 15's "5× transformers", with transformers measured by `mmbert bench` in the same session)
cannot be met on that machine; results/efficiency_*.md does that comparison.

Attention is left out of the ceiling on purpose (it only lowers it further): with N(256, 64)
documents it is ~6% of the FLOPs (bench.model_flops counts it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
import warnings

import torch
import torch.nn as nn

from mmbert.allocator import tune_malloc
from mmbert.inference import cpu_flags, cpu_model, cpu_vendor, int8_available
from mmbert.model.config import EncoderConfig


def gemm_seconds(rows: int, k: int, n: int, dtype: str, repeats: int) -> float:
    """Median seconds of y = x Wᵀ with x [rows, k], W [n, k] in `dtype` (fp32 / bf16 / int8)."""
    torch.manual_seed(0)
    x, lin = torch.randn(rows, k), nn.Linear(k, n, bias=False).eval()
    if dtype == "bf16":
        x, lin = x.bfloat16(), lin.bfloat16()
    elif dtype == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    times = []
    with torch.inference_mode():
        lin(x)
        for _ in range(repeats):
            t = time.perf_counter()
            lin(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def layer_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, int]]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"Wqkv": (h, 3 * h), "attn Wo": (h, h), "GeGLU Wi": (h, 2 * i), "MLP Wo": (i, h)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mmbert-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=2048, help="rows per GEMM (the benchmark's batch budget)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()
    cfg = EncoderConfig.from_preset(args.preset)
    dtypes = ["fp32", "bf16"] + (["int8"] if int8_available() else [])
    flags = " ".join(f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if f in cpu_flags())
    print(f"{cpu_vendor()} {cpu_model()} ({flags or 'no bf16/VNNI/AMX flags'}), torch {torch.__version__}, "
          f"{args.threads} thread(s), load {os.getloadavg()[0]:.2f}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.preset}: "
          f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, GeGLU {cfg.intermediate_size}\n")
    per_token = {d: 0.0 for d in dtypes}
    flops = 0
    print(f"| GEMM ({args.tokens} rows) | k × n | " + " | ".join(f"{d} GFLOP/s" for d in dtypes) + " |")
    print("|---|---|" + "---:|" * len(dtypes))
    for name, (k, n) in layer_shapes(cfg).items():
        f = 2 * args.tokens * k * n
        flops += f // args.tokens * cfg.num_hidden_layers
        s = {d: gemm_seconds(args.tokens, k, n, d, args.repeats) for d in dtypes}
        for d in dtypes:
            per_token[d] += s[d] / args.tokens * cfg.num_hidden_layers
        print(f"| {name} | {k} × {n} | " + " | ".join(f"{f / s[d] / 1e9:.0f}" for d in dtypes) + " |")
    print(f"\nLinear-layer FLOPs per token: {flops / 1e6:.1f} M.\n")
    print("| dtype | ceiling tok/s (linear layers only) |\n|---|---:|")
    for d in dtypes:
        print(f"| {d} | {1 / per_token[d]:.0f} |")


if __name__ == "__main__":
    main()
