"""ONE attention entry point for the encoder, `attention(q, k, v, plan, local=...)`, with backends.

Layouts
- padded: q, k, v are [B, T, heads, head_dim]; `plan.key_padding` [B, T] marks real tokens.
- packed (unpadded): q, k, v are [N, heads, head_dim], N real tokens of D documents back to back,
  `plan.cu_seqlens` [D+1]. Nothing is computed on padding in the linear layers; attention never
  crosses a document boundary and RoPE positions restart per document (done by the caller).

Backends (`plan.backend`)
- "eager": explicit scores, masked positions filled with the dtype's minimum, a float32 softmax —
  the oracle every faster path is tested against (padded layout).
- "sdpa": `F.scaled_dot_product_attention` with a boolean mask (padded layout).
- "varlen": the packed path for any device without flash-attn. Global layers on CPU: one SDPA
  call per document on views of the stream (no padding, no mask, no gather); on other devices the
  documents are gathered into a few length buckets (padded to ≤1.25× their length) so the number
  of kernel launches stays small. Local layers: the token stream is cut into blocks of b = w/2
  queries that each see the b + 2w keys around them (a band, computed in one batched SDPA call
  with an additive 0/−inf mask for |i−j| ≤ w ∧ same document, built once per plan and dtype), so
  a sliding-window layer costs O(N·w), not O(N·T) — this is what keeps 8k-token documents as
  efficient per FLOP as 512-token ones on CPU. Measured on CPU (1 thread, benchmarks/
  attention_cpu.py, results/attention_cpu_*.md): per-document calls beat the buckets 1.15–2×
  (the gathers, the scatter and the padding cost more than the calls); b = w/2 beats b = w by
  ~1.2× (2.5w keys per query instead of 3w, for the 2w+1 needed), while b = w/4 or smaller makes
  the GEMMs too small to gain; a precomputed float mask saves SDPA turning a bool one into it on
  every call (~3%). Earlier (benchmarks/attention_backends.py): faster than one SDPA call with a
  block-diagonal mask over the whole stream (O(N²)) and compiled FlexAttention (needs
  torch.compile per shape on CPU).
- "torch-varlen": torch's own FlashAttention-2 varlen kernel, `torch.nn.attention.varlen.varlen_attn`
  (CUDA sm80+, fp16/bf16; nothing to install or build), window (w, w) on local layers. The CUDA
  default when flash-attn is not usable: no host syncs per layer (the plan is built once), and it
  is a registered custom op with a fake kernel, so torch.compile traces it without graph breaks.
  The kernel has no attention dropout (torch hard-codes 0.0), so dropout_p > 0 is refused.
- "flash": flash-attn's `flash_attn_varlen_func` (CUDA, fp16/bf16), window (w, w) on local layers.
  Optional (`pip install flash-attn`, built from source); picked by "auto" only when that
  *function* imports — the flash-attn-4 wheel installs a `flash_attn` namespace without it.

Both CUDA kernels get two distinct cu_seqlens tensors for q and k (equal values): Dynamo refuses
the same tensor passed twice to flash-attn's autograd function (a graph break per layer).

The sliding window is symmetric and inclusive: token i attends to j iff |i − j| ≤ local_attention//2
(transformers' `sliding_window_bidirectional_overlay`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BACKENDS = ("eager", "sdpa", "varlen", "torch-varlen", "flash")
PACKED_BACKENDS = ("varlen", "torch-varlen", "flash")


def flash_attn_available() -> bool:
    """flash-attn's varlen *function* imports (not just a package named flash_attn) and CUDA is up."""
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def torch_varlen_available(device: torch.device | None = None) -> bool:
    """torch's FA2 varlen kernel can run here: the API exists, torch was built with flash
    attention, and the GPU is Ampere (sm80) or newer."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except Exception:
        return False
    if not torch.cuda.is_available() or not torch.backends.cuda.is_flash_attention_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, dropout_p: float = 0.0) -> str:
    """'auto' → on CUDA with half precision: flash when flash-attn's function imports, else
    torch-varlen when torch's kernel runs on this GPU (and no attention dropout is asked for);
    otherwise (CPU, fp32) varlen."""
    if name == "auto":
        if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
            if flash_attn_available():
                return "flash"
            if dropout_p == 0 and torch_varlen_available(device):
                return "torch-varlen"
        return "varlen"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    return name


def _bucket_length(n: int, granularity: int = 4) -> int:
    """Round n up to one of `granularity` steps per power of two (64, 80, 96, 112, 128, 160, …)."""
    if n <= 64:
        return 64 if n > 32 else max(8, 1 << (n - 1).bit_length())
    p = 1 << (n - 1).bit_length()  # next power of two ≥ n
    step = p // (2 * granularity)
    return int(math.ceil(n / step) * step)


def _length_buckets(cu: torch.Tensor, device: torch.device) -> list:
    """Documents sorted by length and grouped by `_bucket_length`: [(gather_idx [d, L], valid [d, L],
    full)] per bucket; index N (one past the stream) is the padding row."""
    lengths, n, buckets = cu[1:] - cu[:-1], int(cu[-1]), []
    order = torch.argsort(lengths, stable=True)
    blen = torch.tensor([_bucket_length(int(x)) for x in lengths[order]])
    for L in torch.unique_consecutive(blen).tolist():
        docs = order[blen == L]
        starts, lens = cu[docs], lengths[docs]
        ar = torch.arange(L)
        valid = ar[None, :] < lens[:, None]
        idx = torch.where(valid, starts[:, None] + ar[None, :], torch.full_like(valid, n, dtype=torch.long))
        buckets.append((idx.to(device), valid.to(device), bool(valid.all())))
    return buckets


@dataclass
class AttentionPlan:
    """Everything attention needs about the batch layout, computed once per forward and shared
    by all layers (masks, gather indices)."""

    backend: str
    window: int  # half window: |i - j| <= window on local layers
    # padded layout
    key_padding: torch.Tensor | None = None  # [B, T] bool, True = real token
    _masks: dict = field(default_factory=dict)
    # packed layout
    cu_seqlens: torch.Tensor | None = None  # [D+1] int32
    cu_seqlens_k: torch.Tensor | None = None  # a distinct copy for the keys (CUDA kernels), same values
    max_seqlen: int = 0
    doc_ids: torch.Tensor | None = None  # [N] long
    uniform_length: int = 0  # every document has this length (0: they differ)
    doc_spans: list = field(default_factory=list)  # CPU: [(start, end)] per document
    buckets: list = field(default_factory=list)  # other devices: [(gather_idx [d, L], valid [d, L], full)]
    band_block: int = 0  # b: queries per block on local layers
    band_mask: torch.Tensor | None = None  # [nb, 1, b, b + 2w] bool

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    # ------------------------------------------------------------------ builders
    @classmethod
    def for_padded(cls, key_padding: torch.Tensor | None, backend: str, window: int) -> "AttentionPlan":
        return cls(backend=backend, window=window, key_padding=key_padding)

    @classmethod
    def for_packed(cls, cu_seqlens: torch.Tensor, max_seqlen: int, backend: str, window: int,
                   device: torch.device) -> "AttentionPlan":
        plan = cls(backend=backend, window=window, cu_seqlens=cu_seqlens.to(device=device, dtype=torch.int32),
                   max_seqlen=int(max_seqlen))
        if backend == "varlen":
            plan._build_varlen(device)
        else:  # flash / torch-varlen: a second tensor for the keys, built once per forward
            plan.cu_seqlens_k = plan.cu_seqlens.clone()
        return plan

    def _build_varlen(self, device: torch.device) -> None:
        cu = self.cu_seqlens.to("cpu", torch.long)
        lengths = (cu[1:] - cu[:-1])
        n = int(cu[-1])
        self.doc_ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(device)
        self.uniform_length = int(lengths[0]) if len(lengths) and bool((lengths == lengths[0]).all()) else 0
        # global layers
        if device.type == "cpu":
            self.doc_spans = [(a, e) for a, e in zip(cu[:-1].tolist(), cu[1:].tolist()) if e > a]
        else:
            self.buckets = _length_buckets(cu, device)
        # local layers: blocks of b queries, each with the b + 2w keys around it, masked to the
        # band and the same document (padding is document −1)
        w = self.window
        b = self.band_block = max(1, w // 2)
        nb = max(1, math.ceil(n / b))
        pad_doc = torch.full((nb * b + 2 * w,), -1, dtype=torch.long)
        pad_doc[w:w + n] = self.doc_ids.cpu()
        q_doc = pad_doc[w:w + nb * b].view(nb, b)
        k_doc = pad_doc.unfold(0, b + 2 * w, b)[:nb]  # [nb, b + 2w]
        qi = torch.arange(b)[:, None]
        kj = torch.arange(b + 2 * w)[None, :] - w  # key offset from the block's first query
        band = (qi - kj).abs() <= w  # [b, b + 2w]
        self.band_mask = (band[None] & (q_doc[:, :, None] == k_doc[:, None, :]))[:, None].to(device)

    def band_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """`band_mask` as an additive mask (0 where allowed, −inf elsewhere) in `dtype`, built once
        per plan and dtype: SDPA would turn the bool mask into this on every call (two `where`s).
        No row is all −inf: every query sees itself (padding queries too, as document −1)."""
        key = ("band", dtype)
        if key not in self._masks:
            bias = torch.zeros(self.band_mask.shape, dtype=dtype, device=self.band_mask.device)
            self._masks[key] = bias.masked_fill_(~self.band_mask, float("-inf"))
        return self._masks[key]

    def padded_mask(self, T: int, local: bool, device: torch.device) -> torch.Tensor | None:
        """[B or 1, 1, T, T] boolean mask (True = may attend) for the padded layout."""
        key = (T, local)
        if key not in self._masks:
            m = None
            if self.key_padding is not None:
                m = self.key_padding[:, None, None, :].to(device=device, dtype=torch.bool)
            if local:
                i = torch.arange(T, device=device)
                band = ((i[:, None] - i[None, :]).abs() <= self.window)[None, None]
                m = band if m is None else (m & band)
            self._masks[key] = m
        return self._masks[key]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, *, local: bool,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention; returns [..., heads * head_dim] in the input's layout."""
    scale = q.shape[-1] ** -0.5
    if plan.backend == "flash":
        return _flash(q, k, v, plan, local, dropout_p, scale)
    if plan.backend == "torch-varlen":
        return _torch_varlen(q, k, v, plan, local, dropout_p, scale)
    if plan.packed:
        if plan.backend != "varlen":
            raise ValueError(f"attention backend {plan.backend!r} needs a padded batch; use one of "
                             f"{', '.join(PACKED_BACKENDS)} for packed (cu_seqlens) input")
        return _varlen(q, k, v, plan, local, dropout_p, scale)
    # padded: [B, T, h, d] → [B, h, T, d]
    B, T = q.shape[:2]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    mask = plan.padded_mask(T, local, q.device)
    if plan.backend == "eager":
        scores = torch.matmul(qt, kt.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qt.dtype)
        probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
        out = torch.matmul(probs, vt)
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).reshape(B, T, -1)


def _varlen(q, k, v, plan: AttentionPlan, local: bool, dropout_p: float, scale: float) -> torch.Tensor:
    N, h, d = q.shape
    if local:
        w, b = plan.window, plan.band_block
        nb = plan.band_mask.shape[0]
        # queries: [nb, h, b, d]; keys/values: the b + 2w tokens around each block, [nb, h, b + 2w, d]
        qp = F.pad(q, (0, 0, 0, 0, 0, nb * b - N)).view(nb, b, h, d).transpose(1, 2)
        kp = F.pad(k, (0, 0, 0, 0, w, nb * b - N + w)).unfold(0, b + 2 * w, b)[:nb].permute(0, 1, 3, 2)
        vp = F.pad(v, (0, 0, 0, 0, w, nb * b - N + w)).unfold(0, b + 2 * w, b)[:nb].permute(0, 1, 3, 2)
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=plan.band_bias(q.dtype), dropout_p=dropout_p,
                                             scale=scale)
        return out.transpose(1, 2).reshape(nb * b, h * d)[:N]
    if plan.uniform_length:
        # every document has the same length (fixed-length batches): the stream already is a
        # [docs, L] grid, so view it instead of gathering and scattering copies (~10% of a bf16 forward)
        L = plan.uniform_length
        qb, kb, vb = (x.view(N // L, L, h, d).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout_p, scale=scale)
        return out.transpose(1, 2).reshape(N, h * d)
    out = q.new_empty(N, h * d)
    if plan.doc_spans:  # CPU: one call per document, [1, h, L, d] views (SDPA's CPU kernel wants 4-D)
        for a, e in plan.doc_spans:
            od = F.scaled_dot_product_attention(*(x[a:e].transpose(0, 1)[None] for x in (q, k, v)),
                                                dropout_p=dropout_p, scale=scale)
            out[a:e] = od[0].transpose(0, 1).reshape(e - a, h * d)
        return out
    zero = q.new_zeros(1, h, d)
    qz, kz, vz = (torch.cat([x, zero]) for x in (q, k, v))  # row N is the padding row
    for idx, valid, full in plan.buckets:
        qb, kb, vb = (x[idx].transpose(1, 2) for x in (qz, kz, vz))  # [docs, h, L, d]
        mask = None if full else valid[:, None, None, :]
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        ob = ob.transpose(1, 2).reshape(idx.shape[0], idx.shape[1], h * d)
        out[idx[valid]] = ob[valid]
    return out


def _flash(q, k, v, plan: AttentionPlan, local: bool, dropout_p: float, scale: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    if not plan.packed:
        raise ValueError("the flash backend runs on packed input; call the model without backend='flash' "
                         "on padded batches (it unpads automatically)")
    window = (plan.window, plan.window) if local else (-1, -1)
    out = flash_attn_varlen_func(q, k, v, plan.cu_seqlens, plan.cu_seqlens_k, plan.max_seqlen, plan.max_seqlen,
                                 dropout_p=dropout_p, softmax_scale=scale, causal=False, window_size=window)
    return out.reshape(q.shape[0], -1)


def _torch_varlen(q, k, v, plan: AttentionPlan, local: bool, dropout_p: float, scale: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if not plan.packed:
        raise ValueError("the torch-varlen backend runs on packed input; call the model without "
                         "backend='torch-varlen' on padded batches (it unpads automatically)")
    if dropout_p > 0:
        raise ValueError(f"torch-varlen has no attention dropout (got attention_dropout={dropout_p}); "
                         f"set attention_dropout=0 or use backend 'flash' or 'varlen'")
    # FA2 window (left, right): key j is seen by query i iff i - left <= j <= i + right, i.e. |i - j| <= w
    window = (plan.window, plan.window) if local else (-1, -1)
    out = varlen_attn(q, k, v, plan.cu_seqlens, plan.cu_seqlens_k, plan.max_seqlen, plan.max_seqlen,
                      scale=scale, window_size=window)
    return out.reshape(q.shape[0], -1)
