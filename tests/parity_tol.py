"""Tolerances for comparing two implementations of the same network, derived rather than tuned.

fp32: two correct implementations differ only by rounding. A length-K fp32 dot product is within
K·u·|x|·|y| of the exact value (Higham, "Accuracy and Stability of Numerical Algorithms" §3.1,
u = eps/2); both sides round independently, so the gap between them is ≤ K·eps relative to the
magnitude of what is summed. Errors enter once per sequential stage (embedding norm, each layer,
head) and are carried forward by the residual stream, so they add over depth. Hence

    atol = eps32 · K · depth · max|reference|

with K the widest reduction in the model (hidden, intermediate or sequence length) and depth =
layers + 2. This is a worst-case-style bound, not a fit: on the tiny parity models the observed gap
is ~1-3 eps·depth·max|ref| (AMD Zen 4), i.e. 15-50× below it, while every real bug seen (a wrong
RoPE θ, GELU for SiLU, an untied decoder) is ≥ 100× above it. It depends on nothing machine-specific.

fp64 "structural" parity (both models `.double()`) removes rounding as an explanation: anything above
1e-9 on O(1-10) values is a difference in the function computed, not in the arithmetic.
"""

from __future__ import annotations

import torch

FP64_ATOL = 1e-9  # fp64 eps is 2.2e-16; K·depth·max|ref| ≲ 1e5 here, so rounding stays < 1e-10


def fp32_atol(reference: torch.Tensor, *, widest: int, depth: int) -> float:
    """The derived fp32 tolerance above for comparing against `reference`."""
    eps = torch.finfo(torch.float32).eps
    return eps * widest * depth * max(float(reference.detach().abs().max()), 1.0)


def assert_fp32_close(got: torch.Tensor, ref: torch.Tensor, *, widest: int, depth: int, msg: str = "") -> None:
    atol = fp32_atol(ref, widest=widest, depth=depth)
    torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=0,
                               msg=lambda m: f"{msg} (derived fp32 atol {atol:.3g}) {m}")


def assert_fp64_close(got: torch.Tensor, ref: torch.Tensor, msg: str = "") -> None:
    assert got.dtype == torch.float64 and ref.dtype == torch.float64, (got.dtype, ref.dtype)
    torch.testing.assert_close(got, ref, atol=FP64_ATOL, rtol=0, msg=lambda m: f"{msg} (fp64) {m}")


def lift_transformers_fp32_rope(monkeypatch) -> None:
    """transformers' ModernBERT computes its RoPE tables and applies them in float32 whatever the
    model dtype, so a `.double()` transformers model is not a float64 function. For the structural
    check, compute the same formula (tables cos/sin(pos·inv_freq), x·cos + rotate_half(x)·sin) in
    the input dtype instead. Only the precision changes, never the formula."""
    from transformers.models.modernbert import modeling_modernbert as mm

    def rotary_forward(self, x, position_ids, layer_type=None):
        inv = getattr(self, f"{layer_type}_inv_freq").to(torch.float64)
        freqs = position_ids[..., None].to(torch.float64) * inv  # [B, T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = getattr(self, f"{layer_type}_attention_scaling")
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + mm.rotate_half(q) * sin, k * cos + mm.rotate_half(k) * sin

    monkeypatch.setattr(mm.ModernBertRotaryEmbedding, "forward", rotary_forward)
    monkeypatch.setattr(mm, "apply_rotary_pos_emb", apply_rotary_pos_emb)
