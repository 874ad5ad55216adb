"""Parallelism applied from outside a single-device model: compile, DDP or FSDP2.

    python -m mmbert.cli pretrain ...                          # CPU or one GPU: no wrapper
    torchrun --nproc_per_node 8 -m mmbert.cli pretrain ...     # same entry point, DDP (default)
    torchrun --nproc_per_node 8 -m mmbert.cli pretrain ... --parallel fsdp   # FSDP2 fully_shard

The model (mmbert.model) knows nothing about ranks. `init_distributed()` reads torchrun's
environment (RANK / WORLD_SIZE / LOCAL_RANK) and starts a process group — NCCL on CUDA, gloo on
CPU — or returns a one-process `Dist` when not launched by torchrun. `parallelize()` then wraps the
built model: FSDP2 shards each encoder layer and the root (tied embedding/decoder stay in the root
group), DDP replicates, and torch.compile (optional) compiles each layer before wrapping, so the
parameter names seen by checkpoints stay the single-device names.

Precision is the same model under DDP and FSDP2. DDP keeps fp32 parameters and the loop's bf16
autocast rounds matmul inputs; the residual stream, the LayerNorms and the RoPE cos/sin tables stay
fp32. FSDP2 with bf16 parameters (`param_dtype`, default bf16 on CUDA) is set up to compute the
same thing:
- layers: `MixedPrecisionPolicy(param_dtype=bf16, cast_forward_inputs=False)` — the bf16 copies are
  what autocast would make of the fp32 weights anyway, and the layer inputs (the fp32 residual
  stream and RoPE tables) are NOT cast (FSDP2's default `cast_forward_inputs=True` casts every
  floating-point argument of every layer to bf16, a different model from DDP's);
- each layer's LayerNorms: their own small group with fp32 parameters (a gain of 1.003 is 1.0 in
  bf16, whose spacing at 1 is 2⁻⁷, so bf16 copies would silently drop the norms' updates; autocast
  runs layer_norm in fp32 with fp32 weights under DDP). One extra all-gather of 2·hidden floats
  per layer;
- the root (embeddings, final norm, MLM head, tied decoder): fp32 parameters, like DDP — the
  embedding lookup, which autocast does not touch, returns the fp32 rows the residual stream
  starts from. Costs an fp32 rather than bf16 all-gather of the embedding matrix.
Gradients are reduced in fp32 (`reduce_dtype`). tests/train/test_precision.py checks the dtypes at
every layer entry and equal losses under both modes (gloo, CPU, bf16 autocast).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Join torchrun's process group if launched by it; pick the device (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev)


def parallelize(model: nn.Module, d: Dist, *, mode: str = "auto", compile: bool = False,
                param_dtype: torch.dtype | None | str = "auto") -> nn.Module:
    """Move to the device and wrap. mode: "auto" (DDP when world_size > 1), "none", "ddp", "fsdp".
    param_dtype (FSDP2 only): dtype of the all-gathered layer weights; "auto" = bf16 on CUDA (the
    loop autocasts to bf16 there), None = fp32 (CPU default)."""
    if mode not in ("auto", "none", "ddp", "fsdp"):
        raise ValueError(f"unknown parallel mode {mode!r}; use auto, none, ddp or fsdp")
    if mode == "auto":
        mode = "ddp" if d.enabled else "none"
    if mode in ("ddp", "fsdp") and not d.enabled:
        mode = "none"  # one process: nothing to shard or replicate
    model = model.to(d.device)
    layers = _layers(model)
    if compile:
        for layer in layers:
            layer.compile(dynamic=True)  # in place: parameter names unchanged
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if param_dtype == "auto":
            param_dtype = torch.bfloat16 if d.device.type == "cuda" else None
        full = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)
        half = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for layer in layers:
            if param_dtype is not None:
                norms = [m for m in layer.modules() if isinstance(m, nn.LayerNorm) and any(True for _ in m.parameters())]
                if norms:
                    fully_shard(norms, mp_policy=full)
            fully_shard(layer, mp_policy=half)
        fully_shard(model, mp_policy=full)
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return model


def _layers(model: nn.Module) -> list[nn.Module]:
    enc = getattr(model, "model", model)
    return list(getattr(enc, "layers", []))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    """Leave the process group once every rank is here: a barrier first, so no rank tears down gloo
    while a peer still has collectives in flight (FSDP2's last reduce-scatters) — without it a fast
    rank's exit aborted its slower peer ("terminate called without an active exception") on a busy
    machine."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
