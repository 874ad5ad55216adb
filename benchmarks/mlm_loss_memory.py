"""Peak memory of the sparse MLM loss per masked token: the plain head (bf16 logits, fp32 copy,
log-softmax, gradients for all masked tokens at once) vs model/loss.py's chunked fused
decoder + cross-entropy.

The loss (forward + backward, from the head's output h [masked, hidden] to the gradients of h,
the tied decoder weight and bias) runs at two numbers of masked tokens M1 < M2; the peak of bytes
allocated is read from torch's memory profiler on CPU (`profile_memory=True`: every allocation and
free of the CPU allocator) or from the CUDA caching allocator on a GPU. The per-masked-token cost
is the slope (peak(M2) − peak(M1)) / (M2 − M1): fixed costs such as the weight-sized gradient
buffer, which both paths allocate, cancel. The ratio chunked / plain of that slope is the figure
the issue asks for (≤ 25%).

    .venv/bin/python benchmarks/mlm_loss_memory.py                       # CPU, V=256k, H=384
    .venv/bin/python benchmarks/mlm_loss_memory.py --device cuda --hidden 768 --m 4096 16384
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmbert.inference import cpu_model  # noqa: E402
from mmbert.model.loss import default_chunk_rows, linear_cross_entropy  # noqa: E402


def plain(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b).float(), t, reduction="sum")


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated while fn runs, above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def measure(kind: str, M: int, H: int, V: int, dtype: str, device: torch.device) -> int:
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(M, H, generator=g) * 0.5).to(device).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.02).to(device).requires_grad_()
    b = torch.zeros(V, device=device, requires_grad=True)
    t = torch.randint(0, V, (M,), generator=g).to(device)
    fn = plain if kind == "plain" else linear_cross_entropy

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = fn(h, w, b, t)
        loss.backward()

    step()  # warm-up (first-call allocations, kernel selection)
    h.grad = w.grad = b.grad = None
    return peak_bytes(step, device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=256_000)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--m", type=int, nargs=2, default=[256, 768], help="two numbers of masked tokens")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    V, H, (m1, m2) = args.vocab, args.hidden, args.m
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    lines = [f"# Sparse MLM loss: peak memory per masked token ({machine})", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"vocab {V:,}, hidden {H}, masked tokens {m1} and {m2}, chunk {default_chunk_rows(V)} rows. "
             f"Per-token = slope of the loss's peak allocation (forward + backward) between the two sizes.", "",
             "| dtype | path | peak at M1 (MB) | peak at M2 (MB) | per masked token (KB) | bytes / token / vocab | vs plain |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for dtype in ("fp32", "bf16"):
        slopes = {}
        for kind in ("plain", "chunked"):
            p1, p2 = (measure(kind, m, H, V, dtype, dev) for m in (m1, m2))
            slopes[kind] = (p2 - p1) / (m2 - m1)
            rel = f"{slopes[kind] / slopes['plain']:.1%}" if kind != "plain" else "100%"
            lines.append(f"| {dtype} | {kind} | {p1 / 2**20:,.0f} | {p2 / 2**20:,.0f} | {slopes[kind] / 1024:,.1f} "
                         f"| {slopes[kind] / V:.2f} | {rel} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
