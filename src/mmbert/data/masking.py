"""MLM masking (BERT's 80/10/10) at the phase's rate — mmBERT lowers it 30% → 15% → 5%.

    from mmbert.data.masking import mask_tokens
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, 0.15, special_ids={0, 1, 2, 3, 4}, vocab_size=32768, mask_id=4,
                                 generator=g)

Each non-special token is selected independently with probability `rate`; of the selected, 80% become
`mask_id`, 10% a random token drawn uniformly from the NON-special vocabulary, 10% stay unchanged.
`labels` hold the original id at selected positions and -100 elsewhere. Differences from the
reference trainer, on purpose: special tokens (pad, bos/cls, eos/sep, unk, mask, …) are never
selected, and random replacements range over the whole vocabulary, not up to the batch's max id.
"""

from __future__ import annotations

from typing import Iterable

import torch

IGNORE_INDEX = -100


class MaskingError(ValueError):
    """Bad masking parameters (rate outside (0, 1), mask id out of range, …)."""


def check_mask_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise MaskingError(f"mask rate must be in (0, 1) (mmBERT uses 0.3 → 0.15 → 0.05), got {rate}")
    return rate


def _special_tensor(special_ids: Iterable[int] | torch.Tensor, vocab_size: int) -> torch.Tensor:
    sp = torch.as_tensor(list(special_ids) if not isinstance(special_ids, torch.Tensor) else special_ids,
                         dtype=torch.long).flatten()
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    sp = sp[(sp >= 0) & (sp < vocab_size)]
    is_special[sp] = True
    return is_special


def mask_tokens(input_ids: torch.Tensor, rate: float, *, special_ids: Iterable[int] | torch.Tensor,
                vocab_size: int, mask_id: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked_input_ids, labels) for integer `input_ids` of any shape (see module docstring).

    Deterministic given `generator`'s state; draws exactly three `torch.rand`-style tensors of
    `input_ids`' shape (select, kind, replacement), so the result for a given seed does not depend on
    how many tokens are special.
    """
    rate = check_mask_rate(rate)
    if not 0 <= mask_id < vocab_size:
        raise MaskingError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
    is_special = _special_tensor(special_ids, vocab_size)
    if not bool(is_special[mask_id]):
        is_special[mask_id] = True   # a token that is already <mask> is never a target
    allowed = (~is_special).nonzero().flatten()
    if allowed.numel() == 0:
        raise MaskingError("every vocabulary id is special; nothing can be masked or drawn")
    ids = input_ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise MaskingError(f"input ids span [{int(ids.min())}, {int(ids.max())}] outside the vocabulary "
                           f"[0, {vocab_size}); check the tokenizer/model vocab_size")
    out, labels = apply_mask(ids, rate, is_special, allowed, mask_id, generator)
    return out.to(input_ids.dtype), labels


def apply_mask(ids: torch.Tensor, rate: float, is_special: torch.Tensor, allowed: torch.Tensor,
               mask_id: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The core of `mask_tokens` with the special-id tables precomputed (the loader calls it per row):
    `is_special` bool [vocab], `allowed` = the non-special ids. `ids` int64, already range-checked."""
    u_select = torch.rand(ids.shape, generator=generator)
    u_kind = torch.rand(ids.shape, generator=generator)
    # uniform over the allowed ids: floor(u * len) with a float64 u has no visible bias for any vocab
    u_repl = torch.rand(ids.shape, generator=generator, dtype=torch.float64)
    selected = (u_select < rate) & ~is_special[ids]
    labels = torch.where(selected, ids, IGNORE_INDEX)
    random_ids = allowed[(u_repl * allowed.numel()).long().clamp_(max=allowed.numel() - 1)]
    out = torch.where(selected & (u_kind < 0.8), mask_id, ids)
    out = torch.where(selected & (u_kind >= 0.8) & (u_kind < 0.9), random_ids, out)
    return out, labels
