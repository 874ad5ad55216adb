"""One optimizer step with gradient accumulation, shared by pretraining and fine-tuning.

    from mmbert.step import train_step, mlm_loss_fn
    stats = train_step(model, optimizer, micro_batches, mlm_loss_fn, grad_clip=1.0)

The loss of a step is normalised by the number of items (masked tokens for MLM, examples for a
classifier) in the *whole global batch*: every micro-batch contributes its unnormalised
`loss_sum`, and the gradient is divided once by the global count (summed over micro-batches and,
under torch.distributed, all-reduced over ranks). So a step's gradient is the same whether the
global batch is one micro-batch, eight micro-batches, or split over N ranks — which "mean of
per-micro-batch means" does not give when micro-batches hold different numbers of masked tokens.

`loss_fn(model, batch) -> (loss_sum: Tensor, count: int | Tensor)` owns moving the batch to the
model's device and calling the model; `mlm_loss_fn` is the one for packed MLM batches.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, int | torch.Tensor]"]


@dataclass
class StepStats:
    loss: float  # global mean loss per item (sum of loss_sum over micro-batches and ranks / count)
    num_items: int  # global number of items (masked tokens / examples) in the step
    grad_norm: float  # total gradient norm before clipping (nan/inf when the step was skipped)
    lr: float  # learning rate of the first param group used by this step
    skipped: bool  # True when the loss or gradient was not finite (or no items): no update made


def _dist_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sync_context(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP no_sync / FSDP2)."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DistributedDataParallel
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 fully_shard module

        @contextlib.contextmanager
        def fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return fsdp_no_sync()
    return contextlib.nullcontext()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[Any],
    loss_fn: LossFn,
    *,
    grad_clip: float | None = 1.0,
    scheduler: Any | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> StepStats:
    """Forward/backward every micro-batch, normalise by the global item count, clip, step.

    grad_clip: max total gradient norm (None or 0 = no clipping; the norm is still reported).
    scheduler: optional object with `.step()` (e.g. a torch LR scheduler), stepped after the update.
    autocast_dtype: e.g. torch.bfloat16 on CUDA; None = full precision.
    A non-finite loss or gradient norm skips the update (grads zeroed) and returns skipped=True so
    the caller can stop with its last good checkpoint.
    """
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("train_step got no micro-batches; pass at least one batch")
    device = _model_device(model)
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    count_total = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(micro_batches):
        with _sync_context(model, sync=(i == len(micro_batches) - 1)):
            with amp:
                loss_sum, count = loss_fn(model, batch)
            # backward the *sum*; the division by the global count happens once, on the grads
            loss_sum.float().backward()
        loss_total += loss_sum.detach().to(torch.float64)
        count_total += torch.as_tensor(count, device=device).to(torch.float64)

    world = _dist_world()
    if world > 1:
        packed = torch.stack([loss_total, count_total])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        loss_total, count_total = packed[0], packed[1]
    n_items = int(count_total.item())
    lr = float(optimizer.param_groups[0]["lr"])
    params = [p for p in model.parameters() if p.grad is not None]
    if n_items == 0:
        optimizer.zero_grad(set_to_none=True)
        return StepStats(loss=float("nan"), num_items=0, grad_norm=float("nan"), lr=lr, skipped=True)

    # DDP/FSDP average gradients over ranks (sum / world); scale to sum / global count.
    scale = world / n_items
    with torch.no_grad():
        for p in params:
            p.grad.mul_(scale)
    max_norm = grad_clip if grad_clip else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=None)
    if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    grad_norm = float(grad_norm)
    loss = float(loss_total.item() / n_items)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return StepStats(loss=loss, num_items=n_items, grad_norm=grad_norm, lr=lr, skipped=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return StepStats(loss=loss, num_items=n_items, grad_norm=grad_norm, lr=lr, skipped=False)


def mlm_loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed MLM batch (the loader's dict) → (sum of token losses, number of masked tokens).

    The batch is fed unpadded as one flat sequence: input_ids/labels/position_ids [N],
    cu_seqlens int32 [docs+1], max_seqlen int.
    """
    device = _model_device(model)
    out = model(
        input_ids=batch["input_ids"].to(device, non_blocking=True),
        cu_seqlens=batch["cu_seqlens"].to(device, non_blocking=True),
        max_seqlen=int(batch["max_seqlen"]),
        position_ids=batch["position_ids"].to(device, non_blocking=True),
        labels=batch["labels"].to(device, non_blocking=True),
    )
    return out.loss_sum, out.num_labelled
