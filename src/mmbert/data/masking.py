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

import numpy as np
import torch

from mmbert.utils import IGNORE_INDEX



class MaskingError(ValueError):
    """Bad masking parameters (rate outside (0, 1), mask id out of range, …)."""


def check_mask_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise MaskingError(f"mask rate must be in (0, 1) (mmBERT uses 0.3 → 0.15 → 0.05), got {rate}")
    return rate


def special_table(special_ids: Iterable[int] | torch.Tensor, vocab_size: int,
                  mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(is_special bool [vocab], allowed = the non-special ids int64) — `mask_id` always special."""
    if not 0 <= mask_id < vocab_size:
        raise MaskingError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
    sp = np.asarray(special_ids.tolist() if isinstance(special_ids, torch.Tensor) else list(special_ids),
                    dtype=np.int64).reshape(-1)
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[sp[(sp >= 0) & (sp < vocab_size)]] = True
    is_special[mask_id] = True      # a token that is already <mask> is never a target
    allowed = np.flatnonzero(~is_special)
    if allowed.size == 0:
        raise MaskingError("every vocabulary id is special; nothing can be masked or drawn")
    return is_special, allowed


def mask_tokens(input_ids: torch.Tensor, rate: float, *, special_ids: Iterable[int] | torch.Tensor,
                vocab_size: int, mask_id: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked_input_ids, labels) for integer `input_ids` of any shape (see module docstring).

    Deterministic given `generator`'s state (the global torch RNG when None): one 63-bit seed is drawn
    from it and the masking itself runs in numpy (`apply_mask`) — numpy is single-threaded, which
    keeps masking fast in a process whose torch thread pool is busy training.
    """
    rate = check_mask_rate(rate)
    is_special, allowed = special_table(special_ids, vocab_size, mask_id)
    ids = input_ids.detach().cpu().long().numpy()
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise MaskingError(f"input ids span [{int(ids.min())}, {int(ids.max())}] outside the vocabulary "
                           f"[0, {vocab_size}); check the tokenizer/model vocab_size")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    out, labels = apply_mask(ids, rate, is_special, allowed, mask_id, np.random.default_rng(seed))
    return (torch.from_numpy(out).to(device=input_ids.device, dtype=input_ids.dtype),
            torch.from_numpy(labels).to(input_ids.device))


def apply_mask(ids: np.ndarray, rate: float, is_special: np.ndarray, allowed: np.ndarray, mask_id: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The masking core (the loader calls it per row): int64 `ids`, range-checked by the caller → (inputs, labels).
    Draws three uniform arrays of ids' shape (select, kind, replacement), so the outcome for a seed does
    not depend on which tokens are special."""
    u = rng.random((3,) + ids.shape)
    selected = (u[0] < rate) & ~is_special[ids]
    labels = np.where(selected, ids, IGNORE_INDEX)
    # uniform over the allowed ids: floor(u * len) with a float64 u has no visible bias for any vocab
    random_ids = allowed[np.minimum((u[2] * allowed.size).astype(np.int64), allowed.size - 1)]
    out = np.where(selected & (u[1] < 0.8), mask_id, ids)
    out = np.where(selected & (u[1] >= 0.8) & (u[1] < 0.9), random_ids, out)
    return out, labels
