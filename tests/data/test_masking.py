"""MLM masking: rate and 80/10/10 within binomial tolerance, specials never selected, labels aligned."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmbert.data.masking import MaskingError, mask_tokens
from mmbert.utils import IGNORE_INDEX

V, MASK = 1000, 4
SPECIAL = {0, 1, 2, 3, 4}


def _ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (n,), generator=g)
    ids[::10] = 0       # pads
    ids[::17] = 2       # bos
    ids[::23] = 1       # eos
    return ids


@pytest.mark.parametrize("rate", [0.3, 0.15, 0.05])
def test_rate_and_split(rate):
    ids = _ids(400_000)
    out, labels = mask_tokens(ids, rate, special_ids=SPECIAL, vocab_size=V, mask_id=MASK,
                              generator=torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(sorted(SPECIAL)))
    sel = labels != IGNORE_INDEX
    n_cand = int((~special).sum())
    k = int(sel.sum())
    sd = (n_cand * rate * (1 - rate)) ** 0.5
    # binomial counts: 5σ is crossed by chance with p ≈ 6e-7; another rate (0.15 for 0.3) is ≳ 100σ off
    assert abs(k - n_cand * rate) < 5 * sd                       # rate within 5σ
    assert not sel[special].any()                                # specials never selected
    assert torch.equal(out[special], ids[special])               # ... nor changed
    assert torch.equal(labels[sel], ids[sel])                    # labels = original ids, aligned
    assert torch.equal(out[~sel], ids[~sel])                     # unselected untouched
    n_mask = int((out[sel] == MASK).sum())
    changed = (out[sel] != MASK) & (out[sel] != ids[sel])
    n_rand = int(changed.sum())
    for frac, n in ((0.8, n_mask), (0.1, n_rand)):
        assert abs(n - frac * k) < 5 * (k * frac * (1 - frac)) ** 0.5, (frac, n, k)  # 5σ, as above
    # random replacements never produce a special id and cover the vocabulary
    repl = out[sel][changed]
    assert not torch.isin(repl, torch.tensor(sorted(SPECIAL))).any()
    if rate == 0.3:
        assert int(repl.min()) < 15 and int(repl.max()) > V - 10


def test_replacements_reach_above_batch_max():
    # the reference trainer draws only up to the batch's max id; we draw from the whole vocabulary
    ids = torch.full((50_000,), 7)
    out, labels = mask_tokens(ids, 0.5, special_ids=SPECIAL, vocab_size=V, mask_id=MASK,
                              generator=torch.Generator().manual_seed(0))
    assert int(out.max()) > 500


def test_deterministic_and_shape_preserving():
    ids = _ids(2 * 3 * 64).view(2, 3, 64).int()
    a = mask_tokens(ids, 0.15, special_ids=torch.tensor([0, 1, 2, 3, 4]), vocab_size=V, mask_id=MASK,
                    generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, 0.15, special_ids=SPECIAL, vocab_size=V, mask_id=MASK,
                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == ids.shape and a[0].dtype == ids.dtype and a[1].dtype == torch.long


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, V - 1), min_size=1, max_size=200), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_invariants(tokens, rate, seed):
    ids = torch.tensor(tokens)
    out, labels = mask_tokens(ids, rate, special_ids=SPECIAL, vocab_size=V, mask_id=MASK,
                              generator=torch.Generator().manual_seed(seed))
    sel = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(sorted(SPECIAL)))
    assert not (sel & special).any()
    assert torch.equal(out[~sel], ids[~sel]) and torch.equal(labels[sel], ids[sel])
    assert ((out >= 0) & (out < V)).all()


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_bad_rate(rate):
    with pytest.raises(MaskingError, match=r"mask rate must be in \(0, 1\)"):
        mask_tokens(torch.tensor([5, 6]), rate, special_ids=SPECIAL, vocab_size=V, mask_id=MASK)


def test_bad_ids():
    with pytest.raises(MaskingError, match="outside the vocabulary"):
        mask_tokens(torch.tensor([5, V]), 0.15, special_ids=SPECIAL, vocab_size=V, mask_id=MASK)
    with pytest.raises(MaskingError, match="mask_id"):
        mask_tokens(torch.tensor([5]), 0.15, special_ids=SPECIAL, vocab_size=V, mask_id=V)
