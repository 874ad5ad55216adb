"""Cross-entropy over a large vocabulary without materialising [tokens, vocab] for the whole batch.

    loss_sum = linear_cross_entropy(h, decoder.weight, decoder.bias, targets)   # = CE(decoder(h), targets).sum()

The sparse MLM head decodes only the masked positions, but at 256k vocabulary even those logits
dominate memory: bf16 logits, their fp32 copy, the log-softmax kept for backward, and in backward
the fp32 and bf16 gradients of the logits — ≈ 18 bytes × vocab per masked token (4.7 MB at 256k),
held for all masked tokens at once. Here the rows are processed in chunks of `chunk_rows`, and
each chunk's gradients with respect to h, the decoder weight and bias are computed right away in
the forward (the "fused linear cross-entropy" of Liger-Kernel / Apple's Cut Cross-Entropy, in
plain torch): nothing of size vocab per token outlives its chunk. Backward only scales the saved
gradients by the incoming scalar. Peak memory of the loss is then ≈ chunk_rows × 18 × vocab bytes
plus one fp32 weight-sized gradient buffer (which the plain path also allocates) —
benchmarks/mlm_loss_memory.py measures it.

Numerics follow the plain path op for op: logits in the compute dtype (bf16 under autocast, as
autocast's linear gives), softmax and the loss in fp32, dlogits = softmax − onehot cast back to the
compute dtype, then the two matmuls of linear's backward in the compute dtype. What differs is
only that the weight and bias gradients are summed over chunks in fp32 (one matmul over all rows
in the plain path) — a summation order, tested in tests/model/test_loss.py.

When no gradient is needed (evaluation, torch.no_grad) the loss is computed chunk by chunk too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (32M: 128 MB in fp32) → 128 rows at a 256k vocabulary


def default_chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // max(vocab_size, 1))


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk_rows: int, cdt: torch.dtype):
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(cdt)
            b = bias.to(cdt) if bias is not None else None
            M = h.shape[0]
            acc = torch.promote_types(cdt, torch.float32)  # fp32 (float64 stays float64, for tests)
            losses = h.new_empty(M, dtype=acc)
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if bias is not None else None
            for s in range(0, M, chunk_rows):
                hc, t = h[s:s + chunk_rows].to(cdt), targets[s:s + chunk_rows]
                logits = F.linear(hc, w, b).to(acc)  # [c, V]
                # the ops of F.cross_entropy's forward and backward: log_softmax, nll, and
                # d(sum CE)/d logits = exp(log_softmax) − onehot (computed in place)
                logp = logits.log_softmax(-1)
                del logits
                rows = torch.arange(len(t), device=logp.device)
                losses[s:s + chunk_rows] = -logp[rows, t]
                g = logp.exp_()
                g[rows, t] -= 1.0
                g = g.to(cdt)
                grad_h[s:s + chunk_rows] = (g @ w).to(h.dtype)
                grad_w += (g.t() @ hc).to(acc)
                if grad_b is not None:
                    grad_b += g.sum(0).to(acc)
        ctx.save_for_backward(grad_h, grad_w, grad_b if grad_b is not None else torch.empty(0))
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype)
        gw = (grad_w * grad_out).to(ctx.dtypes[0])
        gb = (grad_b * grad_out).to(ctx.dtypes[1]) if ctx.has_bias else None
        return gh, gw, gb, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """sum over rows of CE(h @ weightᵀ + bias, targets), chunked over rows; h [M, H], targets [M]."""
    chunk_rows = chunk_rows or default_chunk_rows(weight.shape[0])
    cdt = _compute_dtype(h, weight)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad:
        return _LinearCrossEntropy.apply(h, weight, bias, targets, chunk_rows, cdt)
    acc = torch.promote_types(cdt, torch.float32)
    total = h.new_zeros((), dtype=acc)
    with torch.autocast(h.device.type, enabled=False):
        w, b = weight.to(cdt), (bias.to(cdt) if bias is not None else None)
        parts = [F.cross_entropy(F.linear(h[s:s + chunk_rows].to(cdt), w, b).to(acc), targets[s:s + chunk_rows],
                                 reduction="none") for s in range(0, h.shape[0], chunk_rows)]
    return torch.cat(parts).sum() if parts else total
