"""Intervals and multiple-comparison control for scores measured per (seed, language).

    from mmbert.eval.stats import hierarchical_bootstrap, holm
    r = hierarchical_bootstrap({"d": diffs})           # diffs: {seed: {language: a − b}}
    r["estimate"], r["ci"], r["p"]                      # mean over cells, 95% interval, two-sided p
    holm({"contrast A": 0.01, "contrast B": 0.04})      # adjusted p-values

Why hierarchical: a model's per-language scores are not independent draws — every language of one
seed shares that seed's initial weights and data order, and with 3 seeds the seed-to-seed spread is
often the larger part of the uncertainty. Resampling seeds, then languages within each drawn seed
(the two-stage bootstrap, Davison & Hinkley 1997 §3.8) carries both levels into the variance;
treating the (seed × language) cells as independent would make intervals far too narrow.

Why not its percentile interval: with 3 seeds the resampled seed means can never leave the range of
the 3 observed ones, so under no effect the interval excludes 0 whenever the 3 seeds agree in sign —
a quarter of the time (measured: 22–29% false "separable" calls on simulated null data, no better
than the "all seeds agree and |mean| > sd" rule it replaces, which made 20–25%). So the bootstrap
here estimates the two variance components of the statistic — within seeds (languages resampled,
seeds fixed) and between seeds (the rest, rescaled by S/(S−1)) — and the interval is
estimate ± t·SE with Welch–Satterthwaite degrees of freedom: S−1 when the seeds dominate (t = 4.3
for 3 seeds), many when the languages do. Measured on simulated null data (3 seeds × 60 languages,
seed spread 0–1 × the language spread): 1–8% false calls at the 95% level.

The statistic may be any function of the resampled means of several paired arrays (all indexed by
the same seeds and languages), e.g. a merge's retention (m − b) / (a − b).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

Cells = Mapping[int, Mapping[str, float]]  # seed → language → value


def _grid(arrays: Mapping[str, Cells]) -> tuple[list[int], list[str], dict[str, np.ndarray]]:
    """Dense [seed, language] arrays over the seeds and languages every array has."""
    seeds = sorted(set.intersection(*(set(a) for a in arrays.values())))
    if not seeds:
        raise ValueError("no seed is present in every array; pair the arms on the same seeds")
    langs = sorted(set.intersection(*(set(a[s]) for a in arrays.values() for s in seeds)))
    if not langs:
        raise ValueError("no language is present in every array and seed")
    return seeds, langs, {k: np.array([[a[s][l] for l in langs] for s in seeds], dtype=np.float64)
                          for k, a in arrays.items()}


def hierarchical_bootstrap(arrays: Mapping[str, Cells], statistic: Callable[..., float] | None = None, *,
                           n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Two-stage bootstrap over seeds, then languages within each drawn seed (see the module doc).

    arrays: named {seed: {language: value}} tables on the same seeds and languages (paired).
    statistic: f(**means) → float, where means[name] is the mean over the resampled cells of that
    array; default: the mean of the single array given.
    Returns estimate (on the data), se, df, ci (estimate ± t_df·se at `level`), p (two-sided,
    t_df), the seeds and the number of languages. Deterministic for a given `seed`.
    """
    from scipy.stats import t as student_t

    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("give a statistic when bootstrapping several arrays")
        only = next(iter(arrays))
        statistic = lambda **m: m[only]  # noqa: E731
    seeds, langs, grid = _grid(arrays)
    S, L = len(seeds), len(langs)
    est = float(statistic(**{k: float(v.mean()) for k, v in grid.items()}))
    if not np.isfinite(est):  # e.g. a ratio whose denominator is 0 on the data: nothing to estimate
        nan = float("nan")
        return {"estimate": nan, "se": nan, "df": nan, "ci": (nan, nan), "p": nan, "seeds": seeds, "languages": L}
    rng = np.random.default_rng(seed)

    def replicate(si: np.ndarray, li: np.ndarray) -> np.ndarray:
        means = {k: v[si[:, :, None], li].mean(axis=(1, 2)) for k, v in grid.items()}
        out = np.array([statistic(**{k: float(m[b]) for k, m in means.items()}) for b in range(len(si))])
        return out[np.isfinite(out)]

    li = rng.integers(0, L, size=(n_boot, S, L))
    both = replicate(rng.integers(0, S, size=(n_boot, S)), li)             # seeds and languages drawn
    within = replicate(np.broadcast_to(np.arange(S), (n_boot, S)), li)     # languages only
    var_w = float(within.var(ddof=1)) if len(within) > 1 else 0.0
    # the seed draw adds (S−1)/S of the between-seed variance of the statistic
    var_b = max(0.0, float(both.var(ddof=1)) - var_w) * S / (S - 1) if S > 1 else 0.0
    se = float(np.sqrt(var_b + var_w))
    parts = (var_b ** 2 / (S - 1) if S > 1 else 0.0) + (var_w ** 2 / (S * (L - 1)) if L > 1 else 0.0)
    df = float((var_b + var_w) ** 2 / parts) if parts > 0 else float("inf")
    if se == 0.0:
        return {"estimate": est, "se": 0.0, "df": df, "ci": (est, est), "p": 0.0 if est else 1.0,
                "seeds": seeds, "languages": L}
    q = float(student_t.ppf(0.5 + level / 2, df))
    p = float(2 * student_t.sf(abs(est) / se, df))
    return {"estimate": est, "se": se, "df": df, "ci": (est - q * se, est + q * se), "p": p,
            "seeds": seeds, "languages": L}


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (step-down; controls the family-wise error rate)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, out, running = len(order), {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def separable(ci: Sequence[float]) -> bool:
    """An interval that excludes 0."""
    return ci[0] > 0 or ci[1] < 0
