"""model/loss.py: the chunked, fused decoder + cross-entropy equals the plain
`F.cross_entropy(decoder(h).float(), targets, reduction="sum")` — loss and the gradients of h, the
decoder weight and bias — and MaskedLM trains with it."""

import pytest
import torch
import torch.nn.functional as F

from mmbert.model import EncoderConfig, build_model
from mmbert.model.loss import linear_cross_entropy


def plain(h, w, b, t):
    """MaskedLM's plain head: logits.float() → CE sum (float64 inputs stay float64, for the exact test)."""
    logits = F.linear(h, w, b)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), t, reduction="sum")


def grads(fn, h, w, b, t):
    h, w, b = (x.detach().clone().requires_grad_() for x in (h, w, b))
    loss = fn(h, w, b, t)
    loss.backward()
    return loss.detach(), h.grad, w.grad, b.grad


def data(M=50, H=16, V=300, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, H, generator=g, dtype=dtype), torch.randn(V, H, generator=g, dtype=dtype) * 0.3,
            torch.randn(V, generator=g, dtype=dtype) * 0.1, torch.randint(0, V, (M,), generator=g))


@pytest.mark.parametrize("chunk", [1, 7, 50, 64])
def test_equals_plain_cross_entropy_float64(chunk):
    """float64: only the summation order differs (chunks of rows), so agreement is to ~1e-15
    relative; 1e-12 leaves room for 50 rows x 300 classes of accumulation."""
    h, w, b, t = data()
    ref = grads(plain, h, w, b, t)
    got = grads(lambda *a: linear_cross_entropy(*a, chunk_rows=chunk), h, w, b, t)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)  # float64: ≤ 300·eps64 ≈ 7e-14 (docstring)
    # and without autograd (evaluation under no_grad) the same loss
    with torch.no_grad():  # float64, as above
        torch.testing.assert_close(linear_cross_entropy(h, w, b, t, chunk_rows=chunk), ref[0], rtol=1e-12, atol=0)


def test_bf16_autocast_single_chunk_is_the_plain_computation():
    """Under bf16 autocast with one chunk the same ops run in the same dtypes: bitwise equal."""
    h, w, b, t = data(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads(plain, h, w, b, t)
        got = grads(lambda *a: linear_cross_entropy(*a, chunk_rows=len(t)), h, w, b, t)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=0, atol=0)  # exact: the same ops in the same dtypes


def test_bf16_autocast_chunked_within_bf16_rounding():
    """With several chunks the weight/bias gradients are bf16 partial products summed in fp32
    instead of one bf16 product over all rows: each rounding is ≤ 2⁻⁹ relative of a partial sum,
    so the result agrees with the plain path to ~1 bf16 ulp of the largest partial sum (2⁻⁸ of the
    gradient's scale). The loss and dh are per-row computations: identical up to the fp32 sum."""
    h, w, b, t = data(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads(plain, h, w, b, t)
        got = grads(lambda *a: linear_cross_entropy(*a, chunk_rows=8), h, w, b, t)
    # the loss: 50 fp32 row losses summed in another order, ≤ rows·eps relative
    torch.testing.assert_close(got[0], ref[0], rtol=len(t) * torch.finfo(torch.float32).eps, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)  # exact: dh is per row, the same ops
    for r, g in zip(ref[2:], got[2:]):
        assert (g - r).abs().max() <= 2 ** -8 * r.abs().max()  # one bf16 ulp of the scale (docstring)


def test_masked_lm_loss_and_grads_equal_the_plain_head():
    """The model's training loss (chunked) vs decoding the same hidden states with the plain head,
    fp32: per-row logits are the same ops; the loss sum and the weight gradient are summed in a
    different order — fp32 eps (1.2e-7) x ~100 terms → 1e-5 relative."""
    cfg = EncoderConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=2, local_attention=16)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    ids = torch.randint(5, 500, (3, 40))
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100)
    out = model(ids, labels=labels)
    assert out.logits is None and out.num_labelled == int((labels != -100).sum())
    out.loss_sum.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    hidden = model.model(ids).last_hidden_state
    keep = labels != -100
    ref = plain(model.head(hidden[keep]), model.decoder.weight, model.decoder.bias, labels[keep])
    ref.backward()
    # the loss: ≈ 36 labelled fp32 row losses summed in another order, ≤ 36·eps ≈ 4e-6 relative; 1e-5
    # keeps room for row losses whose logits a differently blocked GEMM rounds differently
    torch.testing.assert_close(out.loss_sum, ref, rtol=1e-5, atol=0)
    for n, p in model.named_parameters():
        # only the decoder/embedding grads sum rows in another order (≤ 36·eps ≈ 4e-6 of the summed
        # |terms|); rtol 1e-4 leaves 25× for cancellation, atol 1e-6 for entries that cancel to ~0
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    with torch.no_grad():  # evaluation keeps returning the sparse logits
        ev = model(ids, labels=labels)
    assert ev.logits.shape == (int(keep.sum()), 500)
