"""A CPU stand-in for torch's FlashAttention-2 varlen kernel, so the `torch-varlen` backend's glue
(packed layout, window argument, two cu_seqlens tensors, the autograd and torch.compile path through
torch's registered custom op) is tested on machines without a GPU.

`install()` registers CPU kernels for torch's own custom ops `torch_attn::_varlen_attn` and
`torch_attn::_varlen_attn_backward` (which otherwise only run on CUDA: on CPU they raise
NotImplementedError from aten::_flash_attention_forward), so `varlen_attn(...)` on CPU tensors goes
through the same public function, custom op, fake kernel and autograd formula as on a GPU, with
only the innermost kernel replaced. The kernel follows FA2's documented semantics, written
independently of mmbert: per document [cu[i], cu[i+1]), query t sees key s iff
t - left <= s <= t + right (a side of -1 = unbounded), softmax in float64. Every call is recorded in
`CALLS` (window, whether q and k got distinct cu_seqlens tensors) for the tests to inspect.

It stays registered for the rest of the process (torch keeps no handle to undo it); that only makes
an op usable on CPU that otherwise raises, and nothing outside tests calls it there.
"""

from __future__ import annotations

import torch

CALLS: list[dict] = []
_installed = False


def _documents(q, k, v, cu_q, cu_k, scale, window):
    """Per document: (slice, q, k, v [h, n, d] float64, softmax probabilities [h, n, n], scale)."""
    assert torch.equal(cu_q, cu_k), "self-attention: q and k documents must coincide"
    left, right = window
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    cu = cu_q.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        qd, kd, vd = (x[a:b].double().transpose(0, 1) for x in (q, k, v))  # [h, n, d]
        s = qd @ kd.transpose(-1, -2) * scale
        i = torch.arange(b - a)
        rel = i[None, :] - i[:, None]  # key - query
        allowed = torch.ones(b - a, b - a, dtype=torch.bool)
        if left >= 0:
            allowed &= rel >= -left
        if right >= 0:
            allowed &= rel <= right
        s = s.masked_fill(~allowed, float("-inf"))
        yield slice(a, b), qd, kd, vd, s, scale


def _reference(q, k, v, cu_q, cu_k, scale, window):
    """FA2 varlen forward in float64: returns (out [Tq, h, d] in q's dtype, lse [h, Tq] fp32)."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.zeros(q.shape[1], q.shape[0], dtype=torch.float64)
    for sl, _, _, vd, s, _ in _documents(q, k, v, cu_q, cu_k, scale, window):
        lse[:, sl] = torch.logsumexp(s, -1)
        out[sl] = (torch.softmax(s, -1) @ vd).transpose(0, 1)
    return out.to(q.dtype), lse.float()


def _reference_backward(dout, q, k, v, cu_q, cu_k, scale, window):
    """Softmax-attention gradients, float64: dV = PᵀdO, dS = P∘(dP − rowsum(dP∘P)), dQ = dS·K·s, dK = dSᵀ·Q·s."""
    dq, dk, dv = (torch.zeros(x.shape, dtype=torch.float64) for x in (q, k, v))
    for sl, qd, kd, vd, s, sc in _documents(q, k, v, cu_q, cu_k, scale, window):
        p = torch.softmax(s, -1)
        do = dout[sl].double().transpose(0, 1)
        dp = do @ vd.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq[sl] = (ds @ kd * sc).transpose(0, 1)
        dk[sl] = (ds.transpose(-1, -2) @ qd * sc).transpose(0, 1)
        dv[sl] = (p.transpose(-1, -2) @ do).transpose(0, 1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def install() -> None:
    global _installed
    if _installed:
        return
    import torch.nn.attention.varlen  # noqa: F401  (defines the torch_attn ops)

    @torch.library.register_kernel("torch_attn::_varlen_attn", "cpu")
    def _fwd(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, scale=None, window_size=None,
             enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        window = tuple(window_size) if window_size is not None else (-1, -1)
        CALLS.append({"window": window, "distinct_cu": cu_seq_q.data_ptr() != cu_seq_k.data_ptr(),
                      "max_q": max_q, "n": query.shape[0]})
        out, lse = _reference(query, key, value, cu_seq_q, cu_seq_k, scale, window)
        return out, lse, torch.zeros(2, dtype=torch.uint64)

    @torch.library.register_kernel("torch_attn::_varlen_attn_backward", "cpu")
    def _bwd(grad_out, query, key, value, out, lse, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, rng_state,
             scale=None, window_size=None):
        window = tuple(window_size) if window_size is not None else (-1, -1)
        return _reference_backward(grad_out, query, key, value, cu_seq_q, cu_seq_k, scale, window)

    _installed = True
