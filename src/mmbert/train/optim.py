"""StableAdamW (torch-optimi) with explicit parameter groups.

    from mmbert.train.optim import build_optimizer, param_groups
    opt = build_optimizer(model, lr=8e-4, weight_decay=8e-5, betas=(0.9, 0.95), eps=1e-8)

StableAdamW (Wortsman et al. 2023) is AdamW with Adafactor-style update clipping per tensor, which
is what ModernBERT and mmBERT train with. Weight decay is *fully decoupled* (`decouple_lr=True`):
the decay applied per step is weight_decay · lr/max_lr, i.e. independent of the LR's magnitude but
following its schedule — the convention of ModernBERT's DecoupledAdamW, where values like 1e-5 /
8e-5 are meaningful per step. Norm weights and biases (every parameter with fewer than two
dimensions, which includes the embedding LayerNorm) get no weight decay; embedding and projection
matrices do.

Implementation: `triton=None` lets torch-optimi pick its fused Triton kernels where they run (CUDA
with bf16 support and Triton installed: one kernel per parameter, no host syncs for the update
clipping), else its foreach path, else the per-tensor loop — which is what runs on CPU (Triton
kernels are CUDA/XPU only), so CPU numerics are unchanged. benchmarks/gpu_check.py records the
implementation chosen on the GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from optimi import StableAdamW
from torch import nn


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases and every other vector/scalar parameter are not decayed."""
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1] if "." in name else ""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in module


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two named groups: "decay" (matrices, embeddings) and "no_decay" (norms, biases).
    Tied parameters (decoder.weight = tok_embeddings.weight) appear once."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                    eps: float = 1e-8, max_lr: float | None = None) -> StableAdamW:
    """StableAdamW over `param_groups(model, weight_decay)`; `max_lr` is the largest LR the
    schedule will reach (the reference for fully decoupled decay), default `lr`."""
    return StableAdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                       weight_decay=weight_decay, decouple_lr=True, max_lr=max_lr or lr,
                       foreach=None, triton=None)


def set_lr_and_weight_decay(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply the schedule's values for this step; the no_decay group stays at 0."""
    for g in optimizer.param_groups:
        g["lr"] = lr
        g["weight_decay"] = 0.0 if g.get("name") == "no_decay" else weight_decay
