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

Implementation (`step_implementation`, chosen from the parameters build_optimizer is given, i.e.
after `train.parallel` wrapped the model): torch-optimi's fused Triton kernels on CUDA when Triton is
installed (one kernel per parameter, no host syncs for the update clipping); its foreach path on
CUDA without Triton (grouped kernels; one `.item()` per tensor remains); the per-tensor loop on CPU —
the path the golden losses were made with — and for FSDP2's DTensor shards on any device: optimi's
Triton kernels take plain tensors only, and its foreach path fails on DTensors
(`aten._foreach_copy_` has no sharding strategy; tests/train/test_optim.py). Left to itself
(`triton=None, foreach=None`) optimi 0.3 picks Triton or the per-tensor loop, never foreach.
benchmarks/gpu_check.py records the choice on the GPU.
"""

from __future__ import annotations

import warnings
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


def step_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """torch-optimi's `foreach` / `triton` flags for these parameters (module docstring)."""
    from optimi.utils import HAS_TRITON

    return step_flags(plain=all(type(p) in (torch.Tensor, nn.Parameter) for p in params),  # not DTensor
                      on_cuda=bool(params) and all(p.device.type == "cuda" for p in params), has_triton=HAS_TRITON)


def step_flags(*, plain: bool, on_cuda: bool, has_triton: bool) -> dict[str, bool]:
    """The choice itself: Triton, else foreach, for plain CUDA tensors; the per-tensor loop otherwise."""
    if not (plain and on_cuda):
        return {"foreach": False, "triton": False}
    return {"foreach": not has_triton, "triton": has_triton}


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                    eps: float = 1e-8, max_lr: float | None = None) -> StableAdamW:
    """StableAdamW over `param_groups(model, weight_decay)`; `max_lr` is the largest LR the
    schedule will reach (the reference for fully decoupled decay), default `lr`."""
    groups = param_groups(model, weight_decay)
    impl = step_implementation([p for g in groups for p in g["params"]])
    with warnings.catch_warnings():  # optimi flags foreach=True as deprecated in favour of Triton, which is absent then
        warnings.filterwarnings("ignore", "Parameter `foreach` is deprecated", DeprecationWarning)
        return StableAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple_lr=True,
                           max_lr=max_lr or lr, **impl)


def set_lr_and_weight_decay(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply the schedule's values for this step; the no_decay group stays at 0."""
    for g in optimizer.param_groups:
        g["lr"] = lr
        g["weight_decay"] = 0.0 if g.get("name") == "no_decay" else weight_decay
