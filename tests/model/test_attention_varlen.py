"""The packed "varlen" attention against the eager oracle, one call at a time (model/attention.py).

Documents shorter and longer than the window, of one token, and of lengths that straddle the
local band's query blocks, so every block/document-boundary case the band mask handles occurs;
global layers both ways the CPU path and the bucketed (other devices) path compute them.
Inputs are float64; the oracle's softmax runs in float32 (as it does for every dtype), so that
rounding sets the tolerance.
"""

import pytest
import torch

from mmbert.model.attention import AttentionPlan, _length_buckets, attention

# tol: the oracle's float32 softmax gives each probability a relative error of a few 2⁻²⁴; the
# output Σ p_j v_j (Σ p_j = 1, |v| < 6 for these randn draws) then moves by ≤ ~4 · 6 · 2⁻²⁴ ≈ 1.5e-6
# (the float64 side adds ~1e-15); 1e-5 leaves margin and still catches any masking error (O(0.1))
TOL = 1e-5
H, D = 3, 8


def eager_oracle(q, k, v, lengths, window, local):
    """Each document on its own through the eager backend (padded layout, a batch of one)."""
    outs, a = [], 0
    for n in lengths:
        plan = AttentionPlan.for_padded(None, "eager", window)
        outs.append(attention(*(x[None, a:a + n] for x in (q, k, v)), plan, local=local)[0])
        a += n
    return torch.cat(outs)


def qkv(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, H, D, generator=g, dtype=torch.float64) for _ in range(3))


# window 8: documents of 1, 3 (< window), 8, 9 (= window, window + 1), 17 (> 2 · window), 40, 301;
# the band's blocks are 4 queries, so document starts fall at every offset inside a block
@pytest.mark.parametrize("lengths", [(1,), (3, 9, 1, 17, 8, 40, 5), (301, 2, 30), (16, 16, 16)])
@pytest.mark.parametrize("local", [True, False])
def test_varlen_matches_eager(lengths, local):
    window = 8
    q, k, v = qkv(sum(lengths))
    cu = torch.tensor((0, *lengths)).cumsum(0).to(torch.int32)
    plan = AttentionPlan.for_packed(cu, max(lengths), "varlen", window, torch.device("cpu"))
    assert plan.band_block == window // 2 and plan.doc_spans  # the CPU path under test
    got = attention(q, k, v, plan, local=local)
    torch.testing.assert_close(got, eager_oracle(q, k, v, lengths, window, local), atol=TOL, rtol=0)


def test_varlen_buckets_match_eager():
    """The length-bucket global path (used off CPU) on CPU: swap the per-document spans for buckets."""
    lengths, window = (3, 9, 1, 17, 8, 40, 5, 70, 66), 8
    q, k, v = qkv(sum(lengths), seed=1)
    cu = torch.tensor((0, *lengths)).cumsum(0).to(torch.int32)
    plan = AttentionPlan.for_packed(cu, max(lengths), "varlen", window, torch.device("cpu"))
    plan.doc_spans, plan.buckets = [], _length_buckets(cu.long(), torch.device("cpu"))
    assert len(plan.buckets) > 1
    got = attention(q, k, v, plan, local=False)
    torch.testing.assert_close(got, eager_oracle(q, k, v, lengths, window, False), atol=TOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_band_bias_is_the_band_mask(dtype):
    cu = torch.tensor([0, 5, 30, 31], dtype=torch.int32)
    plan = AttentionPlan.for_packed(cu, 25, "varlen", 4, torch.device("cpu"))
    bias = plan.band_bias(dtype)
    assert bias.dtype == dtype and plan.band_bias(dtype) is bias  # built once per dtype
    assert torch.equal(bias == 0, plan.band_mask) and torch.isneginf(bias[~plan.band_mask]).all()
    assert plan.band_mask.any(-1).all()  # no query row is fully masked (that would give NaN)
