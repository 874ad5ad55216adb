"""Training FLOPs and hardware peaks, for the loop's throughput and MFU records.

    from mmbert.train.flops import step_flops, peak_flops
    mfu = step_flops(config, micro_batches, masked_tokens) / seconds / peak_flops(device)

`flops_per_token` is the usual per-token estimate (for planning); `step_flops` counts what one step
actually ran, from the packed documents' real lengths (tests/train/test_mfu.py checks its attention
pairs against a brute-force enumeration).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from mmbert.model.config import EncoderConfig


def flops_per_token(cfg: EncoderConfig, seq_len: int, mask_rate: float) -> float:
    """Training FLOPs per token: 6·(non-embedding params) + 6·(decoder for the masked fraction,
    sparse prediction) + attention 12·L·h·context (context = window on local layers)."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    dense = cfg.num_parameters(include_embeddings=False, head="mlm") - (cfg.vocab_size if cfg.decoder_bias else 0)
    decoder = h * cfg.vocab_size * mask_rate
    ctx = sum(seq_len if cfg.is_global_layer(i) else min(seq_len, cfg.local_attention) for i in range(L))
    return 6.0 * (dense + decoder) + 12.0 * h * ctx


def step_flops(cfg: EncoderConfig, micro_batches: Sequence[dict[str, Any]], masked_tokens: int) -> float:
    """Training FLOPs this rank actually ran useful work for in one step, from the packed documents'
    real lengths (padding segments excluded): 6·(non-embedding params) per real token, 6·h·V per
    masked token (sparse decoder), and attention 12·h per attended (query, key) pair per layer —
    n² pairs for a document of n tokens on a global layer, ≈ n·(2w+1) on a local one (half window
    w). Counting global attention over the full seq_len instead overstates it whenever documents are
    shorter than the row (at seq 8192, about a third of those FLOPs never run)."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    dense = cfg.num_parameters(include_embeddings=False, head="mlm") - (cfg.vocab_size if cfg.decoder_bias else 0)
    w = cfg.local_attention // 2
    n_global = sum(cfg.is_global_layer(i) for i in range(L))
    tokens = pairs = 0
    for b in micro_batches:
        n = np.diff(b["cu_seqlens"].numpy()).astype(np.float64)
        if "doc_lang" in b:
            n = n[b["doc_lang"].numpy() >= 0]  # drop the padding segments
        tokens += n.sum()
        local = np.where(n <= w, n * n, n * (2 * w + 1) - w * (w + 1))
        pairs += n_global * (n * n).sum() + (L - n_global) * local.sum()
    return 6.0 * dense * tokens + 6.0 * h * cfg.vocab_size * masked_tokens + 12.0 * h * pairs


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs; $MMBERT_PEAK_FLOPS overrides (e.g. for a CPU)."""
    if os.environ.get("MMBERT_PEAK_FLOPS"):
        return float(os.environ["MMBERT_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("A10", 125e12),
                     ("4090", 165e12), ("3090", 71e12)):
        if key in name:
            return val
    return None
