"""p_ℓ ∝ n_ℓ^τ: the one temperature-sampling formula — the loader's language mix (`mmbert.data.sampling`,
which re-exports these names) and the tokenizer's training mix (`mmbert.tokenizer`). It sits at the
bottom layer because both use it and `mmbert.data` itself builds on the tokenizer.

    from mmbert.temperature import temperature_probs
    temperature_probs({"eng_Latn": 1e9, "fao_Latn": 1e6}, 0.3)   # {"eng_Latn": 0.89…, "fao_Latn": 0.11…}
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np


class SamplingError(ValueError):
    """Bad sampling input: unknown or empty language, τ ≤ 0, impossible epoch cap."""


def _check_tau(tau: float, allow_zero: bool = False) -> float:
    tau = float(tau)
    if allow_zero and tau == 0:
        return tau
    if not math.isfinite(tau) or tau <= 0:
        raise SamplingError(f"temperature τ must be > 0 (mmBERT uses 0.7 → 0.5 → 0.3; 1 = proportional), got {tau}")
    return tau


def temperature_probs(tokens: Mapping[str, float], tau: float, *, allow_zero: bool = False) -> dict[str, float]:
    """p_ℓ ∝ n_ℓ^τ over the given languages (in the mapping's order): the one temperature sampling
    (the loader's language mix, the tokenizer's training mix). Computed in log space so 1,800
    languages spanning 10 orders of magnitude and small τ stay exact to float64. allow_zero: τ = 0
    (equal shares) is a valid tokenizer mix, never a pretraining phase's."""
    tau = _check_tau(tau, allow_zero)
    if not tokens:
        raise SamplingError("no languages to sample from; give at least one language with data")
    names = list(tokens)
    n = np.array([float(tokens[k]) for k in names])
    bad = [k for k, v in zip(names, n) if not (v > 0 and math.isfinite(v))]
    if bad:
        raise SamplingError(f"language(s) with no tokens cannot be sampled: {', '.join(bad[:10])}; "
                            f"drop them from the phase's language set or rebuild their shards")
    logits = tau * np.log(n)
    w = np.exp(logits - logits.max())
    p = w / w.sum()
    return dict(zip(names, p.tolist()))
