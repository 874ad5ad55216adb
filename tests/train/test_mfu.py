"""MFU counts the FLOPs of the documents actually packed: attention pairs from real document
lengths (global n², local |i−j| ≤ w), padding segments excluded — checked against brute-force
enumeration of the pairs."""

import torch

from mmbert.train.flops import flops_per_token, step_flops

from tinyrun import tiny_config


def brute_pairs(n, w=None):
    return sum(1 for i in range(n) for j in range(n) if w is None or abs(i - j) <= w)


def test_step_flops_from_real_document_lengths():
    cfg = tiny_config(local_attention=16)  # 2 layers: layer 0 global, layer 1 local (w = 8)
    h, V = cfg.hidden_size, cfg.vocab_size
    dense = cfg.num_parameters(include_embeddings=False, head="mlm") - (V if cfg.decoder_bias else 0)
    lengths = [3, 20, 9]  # one row of 32 = 3 + 20 + 9, no padding
    batch = {"cu_seqlens": torch.tensor([0, 3, 23, 32], dtype=torch.int32), "doc_lang": torch.tensor([0, 1, 0])}
    want = (6 * dense * 32 + 6 * h * V * 5
            + 12 * h * sum(brute_pairs(n) + brute_pairs(n, 8) for n in lengths))
    assert step_flops(cfg, [batch], 5) == want
    # a padding segment (doc_lang -1) costs nothing useful
    padded = {"cu_seqlens": torch.tensor([0, 3, 23, 32, 40], dtype=torch.int32),
              "doc_lang": torch.tensor([0, 1, 0, -1])}
    assert step_flops(cfg, [padded], 5) == want
    # one full-row document: global attention matches the seq_len formula, and short documents
    # cost less than it claims
    full = {"cu_seqlens": torch.tensor([0, 32], dtype=torch.int32), "doc_lang": torch.tensor([0])}
    assert step_flops(cfg, [batch], 0) < step_flops(cfg, [full], 0) <= flops_per_token(cfg, 32, 0.0) * 32 * 1.01
