"""Language sampling for the mmBERT recipe: temperature sampling over a phase's language set.

mmBERT ("annealed language learning") samples language ℓ with n_ℓ available tokens with probability

    p_ℓ = n_ℓ^τ / Σ_k n_k^τ          τ = 0.7 (pretrain, 60 langs) → 0.5 (mid, 110) → 0.3 (decay, 1,833)

τ = 1 is proportional to data size, τ → 0 approaches uniform. Over a planned token budget B a language
is then seen p_ℓ·B / n_ℓ times ("epochs"); low-resource languages repeat more as τ falls.

    from mmbert.data.sampling import select_languages, plan_phase, plot_plans
    counts = {lang: index.tokens(lang) for lang in index.languages}      # a ShardIndex
    langs = select_languages(counts, "top:60")           # or "all", "min:1e9", ["deu_Latn", ...]
    plan = plan_phase(counts, langs, tau=0.7, budget=2.3e12, epoch_cap=None, name="pretrain")
    print(plan.table()); plan.save("out/plans/pretrain")  # .md table + .json
    plot_plans([plan_pre, plan_mid, plan_decay], "out/plans/distributions.png")

Language sets (`select_languages`): an explicit list of names, or a tier string —
"all" (every language), "top:K" (the K largest by tokens; ties broken by name), "min:X" (languages
with at least X tokens; X may be written 1e9). Naming a language that has no shard, or selecting a
language with zero tokens, is a `SamplingError` (a ValueError) before any training starts.

Epoch cap (optional, `epoch_cap=c` with a `budget`): no language may be drawn more than c·n_ℓ tokens
in expectation. Rule ("water-filling"): every language whose temperature share would exceed its cap
is fixed at exactly p_ℓ = c·n_ℓ / B; the probability mass removed is handed to the uncapped languages
in proportion to their temperature probabilities (so their ratios p_i/p_j = (n_i/n_j)^τ are kept);
this repeats until no language exceeds its cap. If c·Σn_ℓ < B the budget cannot be met without
exceeding the cap for everyone, which is an error.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from mmbert.data.shards import ShardIndex
from mmbert.temperature import SamplingError, temperature_probs  # noqa: F401 (SamplingError re-exported)
from mmbert.utils import atomic_write


SHARES_COMPLETE = 1e-9  # fixed shares summing to 1 within this cover the whole phase


_TIER = re.compile(r"^(top|min):\s*([0-9.eE+_]+)$")


def parse_tier(spec: str) -> tuple[str, float]:
    """A tier spec → ("all", 0), ("top", K) or ("min", X): the one reader of the syntax (recipes check
    it before any shard exists, `select_languages` resolves it against the shards)."""
    s = spec.strip()
    if s == "all":
        return "all", 0.0
    m = _TIER.match(s)
    try:
        kind, num = m.group(1), float(m.group(2).replace("_", ""))
    except (AttributeError, ValueError):  # no match, or digits float() refuses ("1e", "1.2.3")
        raise SamplingError(f"unknown language set {spec!r}; use 'all', 'top:K' (the K largest languages), "
                            f"'min:X' (at least X tokens, e.g. min:1e9) or a list of language names like "
                            f"['deu_Latn', 'fra_Latn']") from None
    if kind == "top" and (num < 1 or num != int(num)):
        raise SamplingError(f"'top:K' needs a whole K ≥ 1, got {spec!r}")
    if kind == "min" and not (num > 0 and math.isfinite(num)):
        raise SamplingError(f"'min:X' needs X > 0 tokens, got {spec!r}")
    return kind, num


def language_set(text: str) -> str | list[str]:
    """A command-line language set: a tier spec ("all", "top:K", "min:X") as is, else a comma-separated
    list of language names."""
    return text if text == "all" or ":" in text else text.split(",")


def select_languages(available: Mapping[str, int], spec: str | Sequence[str]) -> list[str]:
    """The languages of one phase, sorted by name. `available` = {lang: train tokens}.

    spec: "all" | "top:K" | "min:X" | an explicit list of language names (see module docstring).
    Every selected language must exist in `available` and hold > 0 tokens (else `SamplingError`).
    """
    if isinstance(spec, str):
        kind, num = parse_tier(spec)
        if kind == "all":
            chosen = list(available)
        else:
            if kind == "top":
                ranked = sorted(available, key=lambda k: (-available[k], k))
                chosen = ranked[:int(num)]
            else:
                chosen = [k for k in available if available[k] >= num]
            if not chosen:
                raise SamplingError(f"language set {spec!r} selects no language (largest has "
                                    f"{max(available.values(), default=0):,} tokens)")
    else:
        chosen = list(spec)
        if not chosen:
            raise SamplingError("empty language list; name at least one language or use 'all'")
        missing = [k for k in chosen if k not in available]
        if missing:
            raise SamplingError(f"language(s) {', '.join(missing[:10])} have no shard; available: "
                                f"{', '.join(sorted(available)[:20])}{' …' if len(available) > 20 else ''}")
        dup = sorted({k for k in chosen if chosen.count(k) > 1})
        if dup:
            raise SamplingError(f"language(s) listed twice: {', '.join(dup)}")
    empty = [k for k in chosen if available[k] <= 0]
    if empty:
        raise SamplingError(f"language(s) {', '.join(sorted(empty)[:10])} have empty shards (0 tokens); "
                            f"remove them from the phase or rebuild their shards")
    return sorted(chosen)


def cap_epochs(tokens: Mapping[str, float], probs: Mapping[str, float], budget: float,
               epoch_cap: float) -> dict[str, float]:
    """Apply the epoch cap by water-filling (rule in the module docstring). Returns new probabilities."""
    if not epoch_cap > 0:
        raise SamplingError(f"epoch_cap must be > 0, got {epoch_cap}")
    if not budget > 0:
        raise SamplingError(f"an epoch cap needs a token budget > 0, got {budget}")
    names = list(probs)
    n = np.array([float(tokens[k]) for k in names])
    p = np.array([float(probs[k]) for k in names])
    if epoch_cap * n.sum() < budget * (1 - 1e-12):
        raise SamplingError(f"budget {budget:,.0f} tokens exceeds epoch_cap × all data "
                            f"({epoch_cap} × {n.sum():,.0f}); raise the cap, add data or shrink the budget")
    limit = epoch_cap * n / budget            # the largest probability each language may take
    capped = np.zeros(len(names), dtype=bool)
    out = p.copy()
    for _ in range(len(names) + 1):
        over = (~capped) & (out > limit * (1 + 1e-12))
        if not over.any():
            break
        capped |= over
        free = 1.0 - limit[capped].sum()
        base = p[~capped]
        out[capped] = limit[capped]
        out[~capped] = free * base / base.sum() if base.size else 0.0
    return dict(zip(names, out.tolist()))


@dataclass
class SamplingPlan:
    """One phase's sampling: languages (sorted), their tokens, probabilities, and expected epochs."""

    name: str
    tau: float
    languages: list[str]
    tokens: list[int]
    probs: list[float]
    budget: float | None = None
    epoch_cap: float | None = None
    capped: list[str] = field(default_factory=list)

    @property
    def expected_epochs(self) -> list[float] | None:
        """p_ℓ·B / n_ℓ per language (None without a budget)."""
        if not self.budget:
            return None
        return [p * self.budget / n for p, n in zip(self.probs, self.tokens)]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.languages, self.probs))

    def table(self, max_rows: int | None = None) -> str:
        """Markdown table, largest share first."""
        ep = self.expected_epochs
        order = sorted(range(len(self.languages)), key=lambda i: (-self.probs[i], self.languages[i]))
        head = (f"### {self.name}: τ = {self.tau}, {len(self.languages)} languages"
                + (f", budget {self.budget:,.0f} tokens" if self.budget else "")
                + (f", epoch cap {self.epoch_cap}" if self.epoch_cap else "") + "\n\n")
        lines = ["| language | tokens | p | expected epochs |", "|---|---:|---:|---:|"]
        for j, i in enumerate(order):
            if max_rows is not None and j >= max_rows:
                lines.append(f"| … {len(order) - max_rows} more | | | |")
                break
            e = f"{ep[i]:.3g}" + (" (capped)" if self.languages[i] in self.capped else "") if ep else "–"
            lines.append(f"| {self.languages[i]} | {self.tokens[i]:,} | {self.probs[i]:.4%} | {e} |")
        return head + "\n".join(lines) + "\n"

    def save(self, path_stem: str | os.PathLike) -> tuple[Path, Path]:
        """Write `<stem>.md` (the table) and `<stem>.json` (all numbers) atomically."""

        stem = Path(path_stem)
        md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
        atomic_write(md, self.table())
        doc = {"name": self.name, "tau": self.tau, "budget": self.budget, "epoch_cap": self.epoch_cap,
               "languages": [{"language": l, "tokens": t, "p": p, "expected_epochs": e}
                             for l, t, p, e in zip(self.languages, self.tokens, self.probs,
                                                   self.expected_epochs or [None] * len(self.probs))]}
        atomic_write(js, json.dumps(doc, indent=1) + "\n")
        return md, js


def plan_phase(available: Mapping[str, int], languages: str | Sequence[str], tau: float,
               budget: float | None = None, epoch_cap: float | None = None,
               name: str = "phase", weights: Mapping[str, float] | None = None,
               shares: Mapping[str, float] | None = None) -> SamplingPlan:
    """Select the phase's languages, compute p ∝ w·n^τ (`weights` w_ℓ default 1, e.g. {"eng_Latn": 4}
    for an English-heavy mix), then apply the optional epoch cap.

    shares: sources drawn at a fixed fraction of the phase's tokens whatever their size (mmBERT fixes
    English and code per phase, e.g. {"eng_Latn": 0.345, "code": 0.051}); the other languages share
    the remaining 1 − Σ shares by temperature. A share source is added to the language set if the
    tier spec did not select it. The epoch cap applies to the τ-sampled languages only."""
    shares = {k: float(v) for k, v in (shares or {}).items()}
    if shares:
        missing = sorted(k for k in shares if available.get(k, 0) <= 0)
        if missing:
            raise SamplingError(f"fixed-share source(s) {', '.join(missing)} have no training tokens in these "
                                f"shards; add their shard folders or drop the share from the recipe")
        total = sum(shares.values())
        bad = {k: v for k, v in shares.items() if not 0.0 < v <= 1.0}
        if bad or total > 1.0 + SHARES_COMPLETE:
            raise SamplingError(f"fixed shares must each be in (0, 1] and sum to ≤ 1 (the rest is τ-sampled); "
                                f"got {len(shares)} shares summing to {total:.6g}" + (f", bad: {bad}" if bad else ""))
        if total >= 1.0 - SHARES_COMPLETE:
            # a complete distribution (e.g. the study's time-shuffled control): no τ-sampling at all
            sampled, langs = [], sorted(shares)
            shares = {k: v / total for k, v in shares.items()}
        else:
            # the tier spec ranks the τ-sampled languages only; the share sources are added to the set
            pool = {k: v for k, v in available.items() if k not in shares}
            spec = languages if isinstance(languages, str) else [k for k in languages if k not in shares]
            sampled = select_languages(pool, spec)
            langs = sorted(set(sampled) | set(shares))
    else:
        langs = select_languages(available, languages)
        sampled = langs
    toks = {k: int(available[k]) for k in langs}
    probs = temperature_probs({k: toks[k] for k in sampled}, tau) if sampled else {}
    if weights:
        bad = {k: v for k, v in weights.items() if k not in sampled or not float(v) > 0}
        if bad:
            raise SamplingError(f"language_weights {bad} name inactive languages or are ≤ 0; "
                                f"active: {', '.join(langs[:20])}{' …' if len(langs) > 20 else ''}")
        w = {k: probs[k] * float(weights.get(k, 1.0)) for k in sampled}
        z = sum(w.values())
        probs = {k: v / z for k, v in w.items()}
    capped: list[str] = []
    rest = 1.0 - sum(shares.values())
    if epoch_cap is not None and not sampled:
        raise SamplingError("an epoch cap needs τ-sampled languages; the fixed shares already cover the phase")
    if epoch_cap is not None:
        if budget is None:
            raise SamplingError("epoch_cap needs the phase's token budget; pass budget=<tokens>")
        probs = cap_epochs({k: toks[k] for k in sampled}, probs, budget * rest, epoch_cap)
        capped = [k for k in sampled if probs[k] * budget * rest >= epoch_cap * toks[k] * (1 - 1e-9)]
    if shares:
        probs = {**{k: v * max(rest, 0.0) for k, v in probs.items()}, **shares}
    if budget is not None and not budget > 0:
        raise SamplingError(f"token budget must be > 0, got {budget}")
    return SamplingPlan(name=name, tau=float(tau), languages=langs, tokens=[toks[k] for k in langs],
                        probs=[probs[k] for k in langs], budget=None if budget is None else float(budget),
                        epoch_cap=epoch_cap, capped=capped)


def plot_plans(plans: Sequence[SamplingPlan], path: str | os.PathLike, max_languages: int = 60) -> Path:
    """One figure like the mmBERT paper's τ 0.7/0.5/0.3 panel: the languages (ordered by size, largest
    first, union over phases, at most `max_languages` of them) on x, sampling share per phase on y.
    A language absent from a phase has share 0 there. Written atomically (temp file + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size: dict[str, int] = {}
    for pl in plans:
        for l, t in zip(pl.languages, pl.tokens):
            size[l] = max(size.get(l, 0), t)
    order = sorted(size, key=lambda k: (-size[k], k))
    if len(order) > max_languages:   # keep the largest and an even sample of the rest, so the tail shows
        keep = np.unique(np.linspace(0, len(order) - 1, max_languages).round().astype(int))
        order = [order[i] for i in keep]
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(order) + 2), 4))
    width = 0.8 / max(1, len(plans))
    for j, pl in enumerate(plans):
        d = pl.as_dict()
        ax.bar(x + (j - (len(plans) - 1) / 2) * width, [d.get(k, 0.0) * 100 for k in order], width,
               label=f"{pl.name} (τ={pl.tau}, {len(pl.languages)} langs)")
    ax.set_xticks(x)
    ax.set_xticklabels(order, rotation=90, fontsize=6)
    ax.set_ylabel("sampling share (%)")
    ax.set_yscale("log")
    ax.set_title("Language sampling distribution per phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def report_plans(plans: Sequence[SamplingPlan], out_dir: str | os.PathLike, *, print_fn=print,
                 max_rows: int | None = 40) -> list[Path]:
    """Print every phase's table (at most `max_rows` rows on screen; the files hold all) and save
    `<out_dir>/sampling_<i>_<name>.md/.json` per phase plus `<out_dir>/sampling.png` (all phases)."""
    out = Path(out_dir)
    paths: list[Path] = []
    for i, pl in enumerate(plans):
        print_fn(pl.table(max_rows=max_rows))
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", pl.name).strip("-") or "phase"
        paths += pl.save(out / f"sampling_{i}_{stem}")
    paths.append(plot_plans(plans, out / "sampling.png"))
    return paths


# mmBERT's three phases as (name, languages, τ): tier and temperature only, no budget
PLAN_PHASES = (("pretrain", "top:60", 0.7), ("mid", "top:110", 0.5), ("decay", "all", 0.3))


def plan_shards(shards: str | os.PathLike, out_dir: str | os.PathLike,
                phases: Sequence[Sequence[str | float]] = PLAN_PHASES, epoch_cap: float | None = None,
                print_fn=print) -> list[Path]:
    """`mmbert sampling-plan`: plan each phase (NAME, LANGUAGES, TAU[, BUDGET_TOKENS]; LANGUAGES = all |
    top:K | min:X | a,b,c, numbers as numbers or strings) on the training tokens of `shards`, then
    `report_plans` into `out_dir`."""
    index = ShardIndex.load(shards)
    counts = {l: index.tokens(l) if index.has(l) else 0 for l in index.languages}
    plans = []
    for ph in phases:
        if len(ph) not in (3, 4):
            raise ValueError(f"--phase takes NAME LANGUAGES TAU [BUDGET], got {' '.join(map(str, ph))!r}")
        name, langs = str(ph[0]), str(ph[1])
        plans.append(plan_phase(counts, language_set(langs), float(ph[2]),
                                budget=float(ph[3]) if len(ph) == 4 else None, epoch_cap=epoch_cap, name=name))
    return report_plans(plans, out_dir, print_fn=print_fn)
