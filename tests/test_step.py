"""train_step: accumulation normalised by the global item count, clipping, non-finite guard."""

import copy

import pytest
import torch
from torch import nn

from mmbert.step import train_step


class TinyMLM(nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def ce_sum(model, batch):
    ids, labels = batch
    logits = model(ids)
    loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                       ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (6, 5), generator=g)
    labels = ids.clone()
    keep = torch.rand(ids.shape, generator=g) < 0.4
    keep[0, 0] = True
    labels[~keep] = -100
    labels[:2] = -100  # first micro-batch has few labels -> uneven counts
    labels[0, 1] = ids[0, 1]
    return ids, labels


# The accumulation tests run in float64: normalisation is what is tested, and there the only float
# difference, summation order over ≤ 30 labels, is ≤ 30·eps64 ≈ 7e-15 relative; hence 1e-12 below.
def test_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    ids, labels = _batches()
    m1 = TinyMLM().double()
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    micro = [(ids[:2], labels[:2]), (ids[2:3], labels[2:3]), (ids[3:], labels[3:])]
    with torch.no_grad():
        full_sum, full_n = ce_sum(m1, (ids, labels))
        mean_of_means = sum(ce_sum(m1, b)[0].item() / ce_sum(m1, b)[1] for b in micro) / len(micro)
    s1 = train_step(m1, o1, [(ids, labels)], ce_sum, grad_clip=None)
    s2 = train_step(m2, o2, micro, ce_sum, grad_clip=None)
    assert s1.num_items == s2.num_items == full_n
    assert s2.loss == pytest.approx(full_sum.item() / full_n, rel=1e-12)  # float64 (above)
    # the global-count normalisation is not the mean of per-micro-batch means: O(0.1) apart with
    # these uneven counts, so 1e-3 is far above rounding and far below the gap
    assert abs(mean_of_means - s2.loss) > 1e-3
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-12, atol=1e-12)  # float64 (above); O(1) weights


def test_loss_value_is_global_mean_and_grad_clip_applies():
    torch.manual_seed(1)
    ids, labels = _batches(1)
    m = TinyMLM().double()  # float64, as above
    with torch.no_grad():
        loss_sum, n = ce_sum(m, (ids, labels))
    before = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    s = train_step(m, opt, [(ids[:3], labels[:3]), (ids[3:], labels[3:])], ce_sum, grad_clip=1e-3)
    assert s.loss == pytest.approx(loss_sum.item() / n, rel=1e-12)  # float64 (above)
    assert s.grad_norm > 1e-3 and not s.skipped  # the norm exceeds the clip, so clipping is active
    # with SGD lr=1 the update norm equals the clipped gradient norm; clip_grad_norm_ scales by
    # 1e-3 / (norm + 1e-6), short of 1e-3 by 1e-6 / norm < 1e-3 relative since norm > 1e-3
    upd = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(m.parameters(), before)))
    assert upd.item() == pytest.approx(1e-3, rel=1e-3)


def test_non_finite_loss_skips_update():
    m = TinyMLM()
    before = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def bad_loss(model, batch):
        loss, n = ce_sum(model, batch)
        return loss * float("nan"), n

    s = train_step(m, opt, [_batches()], bad_loss)
    assert s.skipped
    for p, b in zip(m.parameters(), before):
        assert torch.equal(p, b)


def test_no_micro_batches_is_an_error():
    m = TinyMLM()
    with pytest.raises(ValueError, match="no micro-batches"):
        train_step(m, torch.optim.SGD(m.parameters(), lr=0.1), [], ce_sum)


def test_scheduler_is_stepped():
    m = TinyMLM()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    s = train_step(m, opt, [_batches()], ce_sum, scheduler=sched)
    assert s.lr == pytest.approx(0.1)  # lr·0.5**s in float: approx's default rel 1e-6 ≫ a few eps64
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
