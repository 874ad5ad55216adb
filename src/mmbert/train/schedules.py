"""Schedules as pure functions of progress (tokens seen), per phase and across a track of phases.

    python -m mmbert.train.schedules cpu-demo out/schedules.png   # plot LR / mask / τ / batch

Each function takes a `Phase` and the tokens already processed *in that phase* (`t`), or a track
(tuple of phases) and the tokens processed since the start of the track; nothing reads a step
counter or global state, so a resumed run recomputes exactly the same values.

LR: warmup-stable-decay (WSD, "trapezoidal"): linear warm-up from 0 over `lr_warmup_tokens`, flat
at `lr_peak`, then over the last `decay_tokens` of the phase
    linear:  lr = peak · (f + (1 − f) · (1 − x))
    1-sqrt:  lr = peak · (f + (1 − f) · (1 − √x))       x = fraction of the decay done, f = final fraction
(1−√ as in Hägele et al. 2024 / ModernBERT: it keeps the LR high longer than linear, then drops).
Batch size: from `batch_start_tokens` to `batch_tokens` over `batch_warmup_tokens` — linearly, or
with `batch_warmup_increment_tokens` in steps of that size as ModernBERT/mmBERT do — in rows of
`seq_len`, rounded to a multiple of the number of data-parallel ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from mmbert.train.recipe import Phase
from mmbert.utils import atomic_write


def lr_at(p: Phase, t: float) -> float:
    """Learning rate after `t` tokens of phase `p`."""
    t = min(max(t, 0.0), float(p.tokens))
    if p.lr_warmup_tokens > 0 and t < p.lr_warmup_tokens:
        return p.lr_peak * t / p.lr_warmup_tokens
    decay_start = p.tokens - p.decay_tokens
    if p.lr_decay == "none" or t <= decay_start:
        return p.lr_peak
    x = (t - decay_start) / p.decay_tokens
    f = p.lr_final_fraction
    if p.lr_decay == "linear":
        return p.lr_peak * (f + (1.0 - f) * (1.0 - x))
    return p.lr_peak * (f + (1.0 - f) * (1.0 - math.sqrt(x)))


def mask_rate_at(p: Phase, t: float) -> float:
    """Mask rate: constant within a phase; mmBERT lowers it at each boundary (30% → 15% → 5%)."""
    return p.mask_rate


def temperature_at(p: Phase, t: float) -> float:
    """Language-sampling τ: constant within a phase, annealed at the boundaries (0.7 → 0.5 → 0.3)."""
    return p.temperature


def batch_tokens_at(p: Phase, t: float) -> int:
    """Target global tokens per step after `t` tokens of the phase (batch-size warm-up)."""
    start = p.batch_start_tokens if p.batch_start_tokens is not None else p.batch_tokens
    if p.batch_warmup_tokens <= 0 or t >= p.batch_warmup_tokens:
        return p.batch_tokens
    if p.batch_warmup_increment_tokens > 0:
        return _stepwise_batch(start, p.batch_tokens, p.batch_warmup_increment_tokens, p.batch_warmup_tokens, t)
    frac = max(t, 0.0) / p.batch_warmup_tokens
    return int(round(start + (p.batch_tokens - start) * frac))


def _stepwise_batch(start: int, end: int, inc: int, warmup: int, t: float) -> int:
    """ModernBERT's BatchSizeWarmupScheduler (src/sequence_packer.py) in global tokens: the sizes
    start, start+inc, …, end−inc each hold for tokens ∝ their size — the same number of optimizer
    steps each — and the warm-up's tokens are spent exactly; then `end`."""
    sizes = range(start, end, inc)
    per_unit = warmup / sum(sizes)  # optimizer steps per size = per_unit (tokens ÷ size)
    cum = 0
    for b in sizes:
        cum += b
        if t < per_unit * cum:
            return b
    return end


def batch_rows_at(p: Phase, t: float, granularity: int = 1) -> int:
    """Global rows per step: the target tokens in rows of seq_len, rounded to a multiple of
    `granularity` (= data-parallel ranks), at least one granule."""
    rows = batch_tokens_at(p, t) / p.seq_len
    return max(1, int(round(rows / granularity))) * granularity


def locate(track: Sequence[Phase], tokens: float) -> tuple[int, float]:
    """(phase index, tokens into that phase) for `tokens` seen since the start of the track.
    At an exact boundary the *next* phase is returned; past the end, the last phase at its end."""
    start = 0
    for i, p in enumerate(track):
        if tokens < start + p.tokens:
            return i, tokens - start
        start += p.tokens
    return len(track) - 1, float(track[-1].tokens)


def phase_starts(track: Sequence[Phase]) -> list[int]:
    out, s = [], 0
    for p in track:
        out.append(s)
        s += p.tokens
    return out


def track_schedule(track: Sequence[Phase], points: int = 400) -> dict[str, list[float]]:
    """Sampled values over the whole track (for plots): tokens, lr, mask_rate, temperature,
    batch_tokens, seq_len, phase index."""
    total = sum(p.tokens for p in track)
    cols: dict[str, list[float]] = {k: [] for k in ("tokens", "lr", "mask_rate", "temperature",
                                                    "batch_tokens", "seq_len", "phase")}
    # sample every phase densely, including both ends, so boundaries show as steps
    for i, (p, s) in enumerate(zip(track, phase_starts(track))):
        n = max(2, int(points * p.tokens / total))
        for k in range(n + 1):
            t = p.tokens * k / n
            cols["tokens"].append(s + t)
            cols["lr"].append(lr_at(p, t))
            cols["mask_rate"].append(mask_rate_at(p, t))
            cols["temperature"].append(temperature_at(p, t))
            cols["batch_tokens"].append(batch_tokens_at(p, t))
            cols["seq_len"].append(p.seq_len)
            cols["phase"].append(i)
    return cols


def plot_schedules(recipe, path) -> None:
    """One PNG: LR, mask rate, τ and batch tokens over tokens, one line per track."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for name, track in recipe.tracks().items():
        s = track_schedule(track)
        for ax, key in zip(axes.flat, ("lr", "mask_rate", "temperature", "batch_tokens")):
            ax.plot(s["tokens"], s[key], label=name, lw=1.5)
            ax.set_title(key)
            ax.set_xlabel("tokens")
    for ax in axes.flat:
        for b in phase_starts(recipe.phases)[1:] + [sum(p.tokens for p in recipe.phases)]:
            ax.axvline(b, color="grey", lw=0.5, ls=":")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"recipe {recipe.name}: schedules over tokens (dotted: phase boundaries)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    import sys

    from mmbert.train.recipe import get_recipe

    plot_schedules(get_recipe(sys.argv[1] if len(sys.argv) > 1 else "mmbert"),
                   sys.argv[2] if len(sys.argv) > 2 else "schedules.png")
