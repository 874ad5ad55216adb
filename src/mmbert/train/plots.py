"""Plots and a short summary of a pretraining run, from its metrics.jsonl.

    python -m mmbert.train.plots out/run        # writes out/run/plots/*.png and out/run/summary.md

loss.png        training loss over tokens, one line per track, phase boundaries dotted
heldout.png     held-out MLM loss over tokens: per tier (thick) and per language (thin), per track
schedules.png   LR, mask rate, τ and sequence length as actually used, over tokens
throughput.png  training tokens/s over tokens
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmbert.utils import atomic_write


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run} a pretraining run directory?")
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _boundaries(train: list[dict[str, Any]]) -> list[float]:
    """Tokens at each phase end of every track (a phase's last step ends exactly there)."""
    out, prev = set(), None
    for r in train:
        if prev is not None and (r["track"], r["phase"]) != (prev["track"], prev["phase"]):
            out.add(prev["tokens"])
        prev = r
    return sorted(out)


def _heldout_panel(ax, evals: list[dict[str, Any]], track: str) -> None:
    """One track's held-out losses (with the main track's before its branch): a thin line per
    language, a thick one per tier, coloured by tier."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    tier_of = {}
    for r in evals:
        if r["track"] in (track, "main"):
            series[r["lang"]].append((r["tokens"], r["loss"]))
            tier_of[r["lang"]] = r["tier"]
    tiers = sorted({t for t in tier_of.values() if t != "macro"})
    colors = {t: f"C{i}" for i, t in enumerate(tiers)}
    for lang, pts in series.items():
        pts.sort()
        xs, ys = zip(*pts)
        if lang.startswith("tier:"):
            ax.plot(xs, ys, lw=2.5, color=colors.get(tier_of[lang], "k"), label=lang[5:])
        elif lang != "macro":
            ax.plot(xs, ys, lw=0.4, alpha=0.35, color=colors.get(tier_of[lang], "grey"))
    ax.set_title(f"held-out MLM loss (15% mask) — {track}")
    ax.legend(fontsize=8, title="tier")


def make_plots(run: str | os.PathLike) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    recs = read_metrics(run)
    train = [r for r in recs if r["type"] == "train"]
    evals = [r for r in recs if r["type"] == "eval"]
    by_track: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        by_track[r["track"]].append(r)
    bounds = _boundaries(train)
    pdir = run / "plots"
    pdir.mkdir(exist_ok=True)
    written = []

    def finish(fig, axes, name):
        for ax in axes:
            for b in bounds:
                ax.axvline(b, color="grey", lw=0.5, ls=":")
            ax.set_xlabel("tokens")
        fig.tight_layout()
        atomic_write(pdir / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        written.append(pdir / name)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for track, rs in by_track.items():
        ys = [r["loss"] for r in rs]
        ax.plot([r["tokens"] for r in rs], ys, lw=0.5, alpha=0.3)
        ax.plot([r["tokens"] for r in rs], _smooth(ys, 20), lw=1.5, label=track)
    ax.set_ylabel("training MLM loss (at the phase's mask rate)")
    ax.legend(fontsize=8)
    ax.set_title(f"{run.name}: training loss")
    finish(fig, [ax], "loss.png")

    if evals:
        tracks = sorted({r["track"] for r in evals}, key=lambda t: (t != "main", t))
        # at most two panels a row, so the figure stays readable at a page's width (≈1000 px)
        ncols = min(2, len(tracks))
        nrows = math.ceil(len(tracks) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False, sharey=True)
        for ax in axes.flat[len(tracks):]:
            ax.set_visible(False)
        for ax, track in zip(axes.flat, tracks):
            _heldout_panel(ax, evals, track)
        for row in axes:
            row[0].set_ylabel("loss")
        finish(fig, list(axes.flat[:len(tracks)]), "heldout.png")

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for key, ax in zip(("lr", "mask_rate", "temperature", "seq_len"), axes.flat):
        for track, rs in by_track.items():
            # a step's value holds from the previous step's tokens up to its own: steps-pre
            ax.plot([r["tokens"] for r in rs], [r[key] for r in rs], lw=1.2, label=track, drawstyle="steps-pre")
        ax.set_title(key)
    axes.flat[0].legend(fontsize=8)
    finish(fig, list(axes.flat), "schedules.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for track, rs in by_track.items():
        ax.plot([r["tokens"] for r in rs], _smooth([r["tokens_per_s"] for r in rs], 10), lw=1, label=track)
    ax.set_ylabel("training tokens/s")
    ax.legend(fontsize=8)
    finish(fig, [ax], "throughput.png")

    write_summary(run, recs)
    return written


def write_summary(run: Path, recs: list[dict[str, Any]]) -> Path:
    train = [r for r in recs if r["type"] == "train"]
    evals = [r for r in recs if r["type"] == "eval"]
    lines = [f"# Pretraining run `{run.name}`", "",
             "| track | steps | tokens | final train loss (mean of last 10 steps) | median tokens/s |",
             "|---|---:|---:|---:|---:|"]
    by_track: dict[str, list[dict]] = defaultdict(list)
    for r in train:
        by_track[r["track"]].append(r)
    for track, rs in by_track.items():
        last = [r["loss"] for r in rs[-10:]]
        lines.append(f"| {track} | {rs[-1]['step']} | {rs[-1]['tokens']:,} | {statistics.mean(last):.4f} | "
                     f"{statistics.median(r['tokens_per_s'] for r in rs):,.0f} |")
    if evals:
        lines += ["", "Held-out MLM loss / accuracy (15% mask) at the end of each phase, macro over languages "
                  "and per tier:", "", "| track | phase | tokens | macro loss | macro acc | tiers (loss) |",
                  "|---|---|---:|---:|---:|---|"]
        last: dict[tuple[str, str], dict] = {}
        for r in evals:
            key = (r["track"], r["phase"])
            if r["lang"] == "macro":
                last[key] = {"macro": r, "tiers": {}, "tokens": r["tokens"]}
        for r in evals:
            key = (r["track"], r["phase"])
            if r["lang"].startswith("tier:") and key in last and r["tokens"] == last[key]["tokens"]:
                last[key]["tiers"][r["tier"]] = r["loss"]
        for (track, phase), v in last.items():
            tiers = ", ".join(f"{t} {x:.3f}" for t, x in v["tiers"].items())
            lines.append(f"| {track} | {phase} | {v['tokens']:,} | {v['macro']['loss']:.4f} | "
                         f"{v['macro']['accuracy']:.4f} | {tiers} |")
    lines += ["", "Plots: plots/loss.png, plots/heldout.png, plots/schedules.png, plots/throughput.png", ""]
    path = run / "summary.md"
    atomic_write(path, "\n".join(lines))
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    for p in make_plots(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(p)
