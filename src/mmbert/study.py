"""The reproduction study: mmBERT's findings at tiny scale, rerun end to end with one command.

    runs/reproduce.sh                                   # everything, from a clean clone
    mmbert study run --shards out/demo/shards --out out/study --logs runs/study --seeds 0 1 2
    mmbert study report --logs runs/study --out docs/reproduction.md

Three arms, each trained with every seed on the embedded corpus's shards (tiny preset):

  recipe          `cpu-demo`: top 12 → top 24 → all languages, τ 0.7 → 0.5 → 0.3, mask 30 → 15 → 5%,
                  three decay variants (decay-eng, decay-cont, decay-all) and their TIES merge
  constant-mask   `cpu-demo-constant-mask`: the same with a 15% mask in every phase (decay-all only)
  mbert-baseline  `cpu-demo-mbert-baseline`: every language from the start, fixed τ 0.7, fixed 15%
                  mask, on the same phase structure (decay-all track only)

The decay-all track of every arm trains on the same number of tokens, so the comparisons are at
equal tokens. Arms share seeds, and a seed fixes the initial weights, so differences are paired by
seed. Every model is scored with the per-language held-out MLM at a fixed 15% masking and seed
(`mmbert.eval.mlm`), grouped by the phase that introduced the language in the recipe arm; the
decay-all endpoints are also fine-tuned on SIB-200 English train and tested zero-shot on every
language (`mmbert.eval.runner`). Logs — training time and losses, every score — are written as
small JSON files under --logs (committed); `report` builds the page and its plots from them alone.
Stages are reused: a finished training run, merge or score is not recomputed.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mmbert.eval.metrics import mean_std
from mmbert.utils import atomic_write

ARMS = {"recipe": "cpu-demo", "constant-mask": "cpu-demo-constant-mask",
        "mbert-baseline": "cpu-demo-mbert-baseline"}
RECIPE_MODELS = ("mid", "decay-eng", "decay-cont", "decay-all", "ties-merge")
TIERS = ("pretrain", "mid", "decay-only")  # the phase of the recipe arm that introduced a language
ENGLISH = "eng_Latn"


@dataclass
class StudyConfig:
    shards: Path  # token shards with a held-out split (`mmbert data prepare`)
    out: Path = Path("out/study")  # training runs and scratch (ignored by git)
    logs: Path = Path("runs/study")  # small JSON logs (committed)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = tuple(ARMS)
    jobs: int = 2  # training runs at a time
    threads: int = 1  # torch threads per training run / per evaluation
    data_dir: Path | None = None  # evaluation data (SIB-200); None = $MMBERT_EVAL_DATA or ../shared/data/eval
    density: float = 0.7  # TIES density (as `mmbert demo`)
    mlm_tokens_per_lang: int = 8192  # held-out tokens scored per language (decay-only ones have ~50–500)
    sib: bool = True
    recipes: dict[str, str] | None = None  # arm → recipe name or recipe .json (default: ARMS; tests shrink it)

    def recipe(self, arm: str) -> str:
        return (self.recipes or ARMS)[arm]

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / Path(self.recipe(arm)).stem / f"seed{seed}"


def models_of(arm: str) -> tuple[str, ...]:
    return RECIPE_MODELS if arm == "recipe" else ("decay-all",)


# ----------------------------------------------------------------------------- stages
def _finished(cfg: StudyConfig, arm: str, seed: int) -> bool:
    from mmbert.train.recipe import get_recipe

    run = cfg.run_dir(arm, seed)
    rec = get_recipe(cfg.recipe(arm))
    ends = list(rec.variants) or [rec.phases[-1].name]
    return all((run / "export" / e / "config.json").is_file() for e in ends)


def _train_one(cfg: StudyConfig, arm: str, seed: int, log: Callable[[str], None]) -> None:
    run = cfg.run_dir(arm, seed)
    if _finished(cfg, arm, seed):
        return
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mmbert", "pretrain", "--recipe", cfg.recipe(arm), "--preset", "tiny", "--seed",
           str(seed), "--data", str(cfg.shards), "--out", str(run), "--threads", str(cfg.threads), "--no-eval"]
    if (run / "run.json").is_file():
        cmd.append("--resume")
    log(f"[study] training {arm} seed {seed}: {' '.join(cmd[2:])}")
    t = time.perf_counter()
    log_path = run.with_name(run.name + ".log")  # beside the run: `pretrain` wants its folder to itself
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"training {arm} seed {seed} failed: {tail[0]} (log: {log_path}; rerun to resume)")
    atomic_write(run / "study_timing.json", json.dumps(
        {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(usage.ru_utime, 1),
         "sys_s": round(usage.ru_stime, 1)}))


def train_all(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
    """Every (arm, seed) run, `cfg.jobs` at a time, each in its own `mmbert pretrain` process
    (resumed where a run directory exists)."""
    todo = [(a, s) for s in cfg.seeds for a in cfg.arms if not _finished(cfg, a, s)]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:
        for f in [pool.submit(_train_one, cfg, a, s, log) for a, s in todo]:
            f.result()


def _chunk_means(points: list[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    """At most n (tokens at the chunk's end, mean loss over the chunk) pairs: a readable curve from
    noisy per-step losses."""
    size = max(1, math.ceil(len(points) / n))
    return [(chunk[-1][0], round(statistics.fmean(l for _, l in chunk), 4))
            for chunk in (points[i:i + size] for i in range(0, len(points), size))]


def _train_log(cfg: StudyConfig, arm: str, seed: int, counts: dict[str, int], tier_of: dict[str, str]) -> dict:
    """What the run did, from its own files: tokens and final loss per track, a thinned loss curve,
    and the wall/CPU time of the training process."""
    run = cfg.run_dir(arm, seed)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("type") == "train"]
    tracks: dict[str, dict] = {}
    curve: dict[str, list] = {}
    for r in rows:
        t = tracks.setdefault(r["track"], {"steps": 0, "tokens": 0, "final_loss": None})
        t.update(steps=r["step"], tokens=r["tokens"], final_loss=round(r["loss"], 4))
        curve.setdefault(r["track"], []).append((r["tokens"], round(r["loss"], 4)))
    thin = {k: _chunk_means(v, 60) for k, v in curve.items()}
    timing_path = run / "study_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    from mmbert.train.recipe import get_recipe

    rec = get_recipe(cfg.recipe(arm))
    trained = sum(p.tokens for p in rec.phases) + sum(p.tokens for v in rec.variants.values() for p in v)
    return {"arm": arm, "recipe": rec.name, "seed": seed, "tokens_trained": trained, "tracks": tracks,
            "tier_tokens": tier_tokens(rec, counts, tier_of), "loss_curve": thin, **timing}


def tier_tokens(rec, counts: dict[str, int], tier_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Expected training tokens per tier on each track: Σ over its phases of budget × Σ_tier p_ℓ
    (p ∝ w·n^τ over the phase's languages, as the loader samples)."""
    from mmbert.data.sampling import plan_phase

    out: dict[str, dict[str, Any]] = {}
    for track, phases in rec.tracks().items():
        acc = dict.fromkeys(TIERS, 0.0)
        epochs: dict[str, float] = {}
        for p in phases:
            plan = plan_phase(counts, p.languages, p.temperature, weights=p.language_weights or None,
                              shares=p.shares or None, budget=p.tokens if p.epoch_cap else None,
                              epoch_cap=p.epoch_cap)
            for lang, prob in zip(plan.languages, plan.probs):
                acc[tier_of[lang]] += prob * p.tokens
                epochs[lang] = epochs.get(lang, 0.0) + prob * p.tokens / counts[lang]
        out[track] = {t: round(v) for t, v in acc.items()}
        # the most any language of the tier is repeated over the track (passes over its training data)
        out[track]["max_epochs"] = {t: round(max((e for lang, e in epochs.items() if tier_of[lang] == t),
                                                 default=0.0), 3) for t in TIERS}
    return out


def merge_all(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
    from mmbert.merge import merge
    from mmbert.train.recipe import get_recipe

    if "recipe" not in cfg.arms:
        return
    rec = get_recipe(cfg.recipe("recipe"))
    for seed in cfg.seeds:
        run = cfg.run_dir("recipe", seed)
        out = run / "merged" / "ties"
        if (out / "config.json").is_file():
            continue
        log(f"[study] TIES merge, seed {seed}")
        merge([run / "export" / v for v in rec.variants], out, method="ties",
              base=run / "export" / rec.phases[-1].name, density=cfg.density, overwrite=True, progress=False)


def _model_path(cfg: StudyConfig, arm: str, seed: int, model: str) -> Path:
    run = cfg.run_dir(arm, seed)
    return run / "merged" / "ties" if model == "ties-merge" else run / "export" / model


def study_tiers(cfg: StudyConfig) -> list[tuple[str, Any]]:
    """Languages by the phase of the recipe arm that introduced them."""
    from mmbert.train.recipe import get_recipe

    rec = get_recipe(cfg.recipe("recipe"))
    return [(p.name, p.languages) for p in rec.phases] + [("decay-only", "all")]


def tier_of_languages(cfg: StudyConfig, counts: dict[str, int]) -> dict[str, str]:
    """language → its study tier, for the shards' per-language training token counts."""
    from mmbert.eval.mlm import assign_tiers

    return assign_tiers(counts, study_tiers(cfg))


def _round(x: float, n: int = 5) -> float:
    return round(x, n) if isinstance(x, float) and math.isfinite(x) else x


def sib_languages(root: Path, tier_of: dict[str, str], per_tier: int = 24) -> tuple[str, ...]:
    """The SIB-200 test languages the study scores: English, and up to `per_tier` of each tier
    (pretrain, mid, decay-only, not in the corpus), spread evenly over the sorted tags. Scoring all
    205 costs ~4× more and, at this model size, says no more (the scores sit at the majority class)."""
    from mmbert.eval import data as eval_data

    available = eval_data.sib200_languages(root)
    groups: dict[str, list[str]] = {}
    for lang in available:
        groups.setdefault(tier_of.get(lang, "not in corpus"), []).append(lang)
    pick = {ENGLISH} if ENGLISH in available else set()
    for langs in groups.values():
        langs = sorted(langs)
        step = max(1, math.ceil(len(langs) / per_tier))
        pick.update(langs[::step])
    return tuple(sorted(pick))


def evaluate_all(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
    """Score every model of every finished run; write logs/<arm>-seed<k>.json after each score."""
    import torch

    import mmbert
    from mmbert.data.shards import ShardIndex
    from mmbert.eval import data as eval_data
    from mmbert.eval.mlm import evaluate_mlm

    torch.set_num_threads(cfg.threads)
    index = ShardIndex.load(cfg.shards)
    langs = [lang for lang in index.languages if index.has(lang, "heldout")]
    counts = {lang: index.tokens(lang) for lang in index.languages}
    tier_of = tier_of_languages(cfg, counts)
    root = eval_data.resolve_data_dir(cfg.data_dir)
    sib = cfg.sib and (root / "sib200").is_dir()
    if cfg.sib and not sib:
        log(f"[study] SIB-200 skipped: {root / 'sib200'} not found (pass --data-dir)")
    cfg.logs.mkdir(parents=True, exist_ok=True)
    for seed in cfg.seeds:
        for arm in cfg.arms:
            path = cfg.logs / f"{arm}-seed{seed}.json"
            if not _finished(cfg, arm, seed):
                log(f"[study] {arm} seed {seed} has not finished training; not scored")
                continue
            entry = json.loads(path.read_text()) if path.is_file() else {}
            train_log = json.loads(json.dumps(_train_log(cfg, arm, seed, counts, tier_of)))  # as stored
            stale = entry.get("train") != train_log
            entry["train"] = train_log
            entry.setdefault("mlm", {})
            entry.setdefault("sib200", {})

            def save() -> None:
                atomic_write(path, json.dumps(entry, indent=0, sort_keys=True))

            if stale and path.is_file():  # scores kept, the training summary refreshed
                save()
            for model in models_of(arm):
                if model not in entry["mlm"]:
                    log(f"[study] MLM {arm} seed {seed} {model}")
                    m = mmbert.from_pretrained(_model_path(cfg, arm, seed, model))
                    r = evaluate_mlm(m, cfg.shards, langs, max_tokens_per_lang=cfg.mlm_tokens_per_lang, seed=0,
                                     seq_len=256, tiers=study_tiers(cfg))
                    entry["mlm"][model] = {
                        "languages": {k: {"accuracy": _round(v["accuracy"]), "loss": _round(v["loss"], 4),
                                          "masked": v["masked_tokens"], "tier": v["tier"]}
                                      for k, v in r["languages"].items()},
                        "settings": {k: r[k] for k in ("seed", "mask_rate", "max_tokens_per_lang", "seq_len")}}
                    save()
            if sib and "decay-all" not in entry["sib200"]:
                from mmbert.eval.runner import TaskSpec, run_suite

                log(f"[study] SIB-200 {arm} seed {seed}")
                spec = TaskSpec("sib200", epochs=4, languages=sib_languages(root, tier_of))
                r = run_suite(_model_path(cfg, arm, seed, "decay-all"), "full", data_dir=root,
                              out_dir=cfg.out / "eval" / f"{arm}-seed{seed}", seeds=(seed,), task_specs=[spec],
                              progress=False, plots=False)
                t = r["tasks"]["sib200"]
                entry["sib200"]["decay-all"] = {
                    "languages": {k: _round(v["mean"]) for k, v in t["languages"].items()},
                    "average": _round(t["average"]["mean"]), "protocol": t["protocol"],
                    "hyperparameters": t["hyperparameters"], "final_train_loss": t["final_train_loss"],
                    "cpu_s": t.get("cpu_seconds")}
                save()


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
    t = time.perf_counter()
    train_all(cfg, log)
    merge_all(cfg, log)
    evaluate_all(cfg, log)
    log(f"[study] done in {time.perf_counter() - t:.0f} s; logs in {cfg.logs}")


# ----------------------------------------------------------------------------- analysis
def load_logs(logs: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for p in sorted(Path(logs).glob("*-seed*.json")):
        d = json.loads(p.read_text())
        out.setdefault(d["train"]["arm"], {})[d["train"]["seed"]] = d
    if not out:
        raise FileNotFoundError(f"no study logs (<arm>-seed<k>.json) in {logs}; run `mmbert study run` first")
    return out


def tier_scores(mlm: dict) -> dict[str, float]:
    """Macro accuracy per tier (mean over languages), token-weighted ('micro') per tier, and English."""
    langs = mlm["languages"]
    res: dict[str, float] = {}
    for tier in TIERS:
        vals = [v for v in langs.values() if v["tier"] == tier and v["masked"] > 0]
        if vals:
            res[tier] = statistics.fmean(v["accuracy"] for v in vals)
            res[f"{tier} (micro)"] = sum(v["accuracy"] * v["masked"] for v in vals) / sum(v["masked"] for v in vals)
    res["all (macro)"] = statistics.fmean(v["accuracy"] for v in langs.values() if v["masked"] > 0)
    if ENGLISH in langs:
        res["English"] = langs[ENGLISH]["accuracy"]
    return res


def sib_by_tier(sib: dict, tier_of: dict[str, str]) -> dict[str, float]:
    langs = sib["languages"]
    res = {"all": sib["average"]}
    for tier in (*TIERS, "not in corpus"):
        vals = [a for lang, a in langs.items() if tier_of.get(lang, "not in corpus") == tier]
        if vals:
            res[tier] = statistics.fmean(vals)
    return res


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """a − b per seed: mean, std, and whether the seeds agree in sign with |mean| > std (the bar for a
    stated conclusion on this page)."""
    d = [x - y for x, y in zip(a, b)]
    m, s = mean_std(d)
    same_sign = all(x > 0 for x in d) or all(x < 0 for x in d)
    return {"diffs": d, "mean": m, "std": s, "n": len(d), "clear": bool(len(d) >= 2 and same_sign and abs(m) > s)}


def fmt_ms(xs: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([x * scale for x in xs])
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}"


def fmt_diff(p: dict, scale: float = 100.0, digits: int = 2) -> str:
    m, s = p["mean"] * scale, p["std"] * scale
    txt = f"{m:+.{digits}f} ± {s:.{digits}f}" if p["n"] > 1 else f"{m:+.{digits}f}"
    return f"**{txt}**" if p["clear"] else txt


def write_report(logs: Path, out_md: Path, log: Callable[[str], None] = print) -> Path:
    """The results page and its plots, from the logs alone."""
    data = load_logs(logs)
    text, plots = render(data, out_md.parent / (out_md.stem + "_files"), logs, out_md.parent)
    atomic_write(out_md, text)
    log(f"[study] wrote {out_md} and {len(plots)} plots")
    return out_md


# ----------------------------------------------------------------------------- the page
def _seeds(data: dict, arms: Sequence[str]) -> list[int]:
    """Seeds present for every arm named (pairing needs the same seeds on both sides)."""
    common = set.intersection(*(set(data.get(a, {})) for a in arms)) if arms else set()
    return sorted(common)


def _scores(data: dict, arm: str, model: str, seeds: Sequence[int]) -> dict[str, list[float]]:
    rows = [tier_scores(data[arm][s]["mlm"][model]) for s in seeds]
    return {k: [r[k] for r in rows] for k in rows[0]}


MAJORITY_SIB = 0.25  # SIB-200 test: the largest of the 7 topics is 25% of the sentences


def _verdict(p: dict, paper_sign: int, what: str, floor: tuple[float, float] | None = None) -> str:
    """floor: the two arms' mean scores, when both sit at a trivial level (the majority class) no
    ranking is stated however consistent the seeds are."""
    if floor is not None and all(abs(x - MAJORITY_SIB) < 0.01 for x in floor):
        return f"{what}: both arms score the majority class (25%) to within 1 point — no ranking at this scale"
    if not p["clear"]:
        return f"{what}: not separable from the seed spread at this scale"
    agrees = (p["mean"] > 0) == (paper_sign > 0)
    return f"{what}: {'as in the paper' if agrees else 'the opposite of the paper'} (all seeds agree)"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_tiers(series: dict[str, dict[str, list[float]]], cols: Sequence[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(cols), 3.8))
    width = 0.8 / len(series)
    for i, (name, sc) in enumerate(series.items()):
        means = [100 * statistics.fmean(sc[c]) for c in cols]
        errs = [100 * mean_std(sc[c])[1] for c in cols]
        ax.bar([j + i * width for j in range(len(cols))], means, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols)
    ax.set_ylabel("held-out MLM accuracy ×100 (15% mask)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_losses(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = {"recipe": "C0", "constant-mask": "C1", "mbert-baseline": "C2"}
    for arm, by_seed in data.items():
        for i, (seed, d) in enumerate(sorted(by_seed.items())):
            curves = d["train"]["loss_curve"]
            pts = [tuple(p) for p in curves.get("main", [])] + [tuple(p) for p in curves.get("decay-all", [])]
            ax.plot([t / 1e6 for t, _ in pts], [l for _, l in pts], color=colors.get(arm), lw=1, alpha=0.8,
                    label=arm if i == 0 else None)
    ax.set_xlabel("training tokens (M): main track, then the decay-all variant")
    ax.set_ylabel("training MLM loss (mean over ~1/60 of a track)")
    ax.set_title("training loss (each line a seed; the mask rate differs by arm, so levels are not comparable)",
                 fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def render(data: dict, files: Path, logs: Path, page_dir: Path) -> tuple[str, list[Path]]:
    plots: list[Path] = []
    rel = lambda p: os.path.relpath(p, page_dir)  # noqa: E731
    L: list[str] = []
    w = L.append
    all_seeds = sorted({s for by in data.values() for s in by})
    w("# Reproducing mmBERT's findings at tiny scale\n")
    w(f"Every number on this page is computed by `mmbert study report` from the JSON run logs in "
      f"`{logs}/` (one per arm and seed), written by `mmbert study run` (`runs/reproduce.sh` reruns it all). "
      f"Seeds: {', '.join(map(str, all_seeds))}; values are mean ± std over seeds (×100 for accuracies). "
      f"A difference is **bold** only when every seed agrees in sign and |mean| > std of the per-seed "
      f"differences; the arms share seeds (same initial weights), so differences are paired by seed.\n")

    # ---- setup and compute
    w("## Arms and compute\n")
    w("| arm | recipe | tracks | tokens per run | wall s per run (mean) | CPU s per run (mean) | seeds |")
    w("|---|---|---|---:|---:|---:|---|")
    total_tokens, total_wall, total_cpu, n_runs, n_no_cpu = 0, 0.0, 0.0, 0, 0
    for arm, by_seed in data.items():
        run_tokens = by_seed[min(by_seed)]["train"]["tokens_trained"]  # main once + each variant
        walls = [d["train"]["wall_s"] for d in by_seed.values() if d["train"].get("wall_s")]
        cpus = [d["train"]["cpu_s"] for d in by_seed.values() if d["train"].get("cpu_s")]
        total_tokens += run_tokens * len(by_seed)
        total_wall += sum(walls)
        total_cpu += statistics.fmean(cpus) * len(by_seed) if cpus else 0.0  # runs without a CPU figure: the mean
        n_runs += len(by_seed)
        n_no_cpu += len(by_seed) - len(cpus)
        first = by_seed[min(by_seed)]["train"]
        w(f"| {arm} | `{first['recipe']}` | {', '.join(sorted(first['tracks']))} | "
          f"{run_tokens:,} | {statistics.fmean(walls) if walls else float('nan'):.0f} | "
          f"{statistics.fmean(cpus) if cpus else float('nan'):.0f} | {', '.join(map(str, sorted(by_seed)))} |")
    est = (f" ({n_no_cpu} of the {n_runs} runs were timed by wall clock only; their CPU time is taken as their "
           f"arm's mean)") if n_no_cpu else ""
    w(f"\nTotal: {total_tokens / 1e6:.1f}M training tokens, {total_cpu / 60:.0f} CPU-minutes of training{est}. "
      f"Each run used one thread; the wall column is inflated wherever runs shared the two cores with other "
      f"work (two trainings at a time, scoring, other jobs), so CPU seconds are the cost: on an idle 2-core "
      f"machine two runs at a time take about half the CPU sum. Scoring is not included.\n")

    w("Expected training tokens per tier on the decay-all track (from each phase's sampling "
      "probabilities; the same for every seed), and in brackets the most any one language of the tier "
      "is repeated (passes over its training data):\n")
    w("| arm | " + " | ".join(TIERS) + " |")
    w("|---|" + "---:|" * len(TIERS))
    for arm, by_seed in data.items():
        tt = by_seed[min(by_seed)]["train"].get("tier_tokens", {}).get("decay-all")
        if tt:
            w(f"| {arm} | " + " | ".join(f"{tt[t]:,} ({tt['max_epochs'][t]:.2f}×)" for t in TIERS) + " |")
    w("")
    tier_cols = ["decay-only", "mid", "pretrain", "English"]

    # ---- 1. decay-only languages
    findings: list[str] = []
    if "recipe" in data:
        seeds = _seeds(data, ["recipe"])
        sc = {m: _scores(data, "recipe", m, seeds) for m in RECIPE_MODELS}
        n_tier = {t: sum(1 for v in data["recipe"][seeds[0]]["mlm"]["mid"]["languages"].values() if v["tier"] == t)
                  for t in TIERS}
        w("## 1. Languages seen only in the decay phase\n")
        w(f"The recipe arm's tiers: **pretrain** = the {n_tier['pretrain']} languages of the pretraining phase, "
          f"**mid** = the {n_tier['mid']} added at mid-training, **decay-only** = the {n_tier['decay-only']} "
          f"languages that only decay-all trains on (their held-out shards are never seen before the decay). "
          f"`mid` is the checkpoint all three decays branch from; `ties-merge` is TIES of the three decays "
          f"relative to it. Held-out MLM accuracy ×100 at 15% masking with a fixed masking seed, on up to "
          f"{data['recipe'][seeds[0]]['mlm']['mid']['settings']['max_tokens_per_lang']:,} held-out tokens per "
          f"language (a decay-only language has ~70), macro over languages:\n")
        w("| model | " + " | ".join(tier_cols) + " | decay-only (token-weighted) |")
        w("|---|" + "---:|" * (len(tier_cols) + 1))
        for m in RECIPE_MODELS:
            w(f"| {m} | " + " | ".join(fmt_ms(sc[m][c]) for c in tier_cols)
              + f" | {fmt_ms(sc[m]['decay-only (micro)'])} |")
        w("\nPaired differences (points):\n")
        w("| comparison | " + " | ".join(tier_cols) + " |")
        w("|---|" + "---:|" * len(tier_cols))
        comps = [("decay-all − mid", "decay-all", "mid"), ("decay-all − decay-eng", "decay-all", "decay-eng"),
                 ("decay-all − decay-cont", "decay-all", "decay-cont"), ("ties-merge − mid", "ties-merge", "mid"),
                 ("ties-merge − decay-all", "ties-merge", "decay-all")]
        pd = {}
        for label, a, b in comps:
            pd[label] = {c: paired(sc[a][c], sc[b][c]) for c in tier_cols}
            w(f"| {label} | " + " | ".join(fmt_diff(pd[label][c]) for c in tier_cols) + " |")
        gain = [x - y for x, y in zip(sc["decay-all"]["decay-only"], sc["mid"]["decay-only"])]
        kept = [x - y for x, y in zip(sc["ties-merge"]["decay-only"], sc["mid"]["decay-only"])]
        ret = [k / g for k, g in zip(kept, gain) if g > 0]
        if ret:
            w(f"\nTIES retention on decay-only languages, (merge − mid) / (decay-all − mid) per seed: "
              f"{', '.join(f'{r:.2f}' for r in ret)} (mean {statistics.fmean(ret):.2f}).\n")
        plots.append(_plot_tiers({m: sc[m] for m in RECIPE_MODELS}, tier_cols, files / "decay_variants.png",
                                 "decay variants and their TIES merge (mean ± std over seeds)"))
        w(f"![decay variants]({rel(plots[-1])})\n")
        findings.append(_verdict(pd["decay-all − mid"]["decay-only"], +1,
                                 "decay-only languages improve when added in the decay "
                                 "(decay-all vs its branch point)"))
        findings.append(_verdict(pd["decay-all − decay-eng"]["decay-only"], +1,
                                 "decay-all beats the English-heavy decay on decay-only languages"))
        findings.append(_verdict(pd["ties-merge − mid"]["decay-only"], +1,
                                 "the TIES merge keeps a gain on decay-only languages over the branch point"))
        findings.append(_verdict(pd["ties-merge − decay-all"]["pretrain"], +1,
                                 "the TIES merge is better than decay-all on the pretraining languages"))

    def endpoint_section(title: str, arms: Sequence[str], comps: Sequence[tuple[str, str, str, int, str]]):
        present = [a for a in arms if a in data]
        if len(present) < 2:
            return
        seeds = _seeds(data, present)
        sc = {a: _scores(data, a, "decay-all", seeds) for a in present}
        w(title)
        w("Decay-all endpoints (equal tokens), held-out MLM accuracy ×100 at 15% masking:\n")
        w("| arm | " + " | ".join(tier_cols) + " | all languages |")
        w("|---|" + "---:|" * (len(tier_cols) + 1))
        for a in present:
            w(f"| {a} | " + " | ".join(fmt_ms(sc[a][c]) for c in tier_cols) + f" | {fmt_ms(sc[a]['all (macro)'])} |")
        sib_ok = all("decay-all" in data[a][s].get("sib200", {}) for a in present for s in seeds)
        tier_of = {k: v["tier"] for k, v in data[present[0]][seeds[0]]["mlm"]["decay-all"]["languages"].items()}
        sib = {}
        if sib_ok:
            rows = {a: [sib_by_tier(data[a][s]["sib200"]["decay-all"], tier_of) for s in seeds] for a in present}
            sib_cols = [c for c in ("all", *TIERS, "not in corpus") if c in rows[present[0]][0]]
            sib = {a: {c: [r[c] for r in rows[a]] for c in sib_cols} for a in present}
            n = len(data[present[0]][seeds[0]]["sib200"]["decay-all"]["languages"])
            w(f"\nSIB-200 zero-shot accuracy ×100 (fine-tuned on English train, tested on {n} languages: English "
              f"and up to 24 per tier, spread over the tags; columns by the recipe's tiers, matched by exact "
              f"tag, 'not in corpus' = SIB languages whose tag has no shard; "
              f"chance is 1/7 = 14.3, the majority class 25.0 of test):\n")
            w("| arm | " + " | ".join(sib_cols) + " |")
            w("|---|" + "---:|" * len(sib_cols))
            for a in present:
                w(f"| {a} | " + " | ".join(fmt_ms(sib[a][c]) for c in sib_cols) + " |")
        w("\nPaired differences (points):\n")
        w("| comparison | " + " | ".join(tier_cols) + " | all languages | SIB-200 |")
        w("|---|" + "---:|" * (len(tier_cols) + 2))
        for label, a, b, sign, what in comps:
            if a not in sc or b not in sc:
                continue
            pdiff = {c: paired(sc[a][c], sc[b][c]) for c in [*tier_cols, "all (macro)"]}
            ps = paired(sib[a]["all"], sib[b]["all"]) if sib else None
            w(f"| {label} | " + " | ".join(fmt_diff(pdiff[c]) for c in [*tier_cols, "all (macro)"]) +
              f" | {fmt_diff(ps) if ps else '–'} |")
            findings.append(_verdict(pdiff["all (macro)"], sign, f"{what} (MLM, all languages)"))
            for t in TIERS:
                findings.append(_verdict(pdiff[t], sign, f"{what} (MLM, {t} tier)"))
            if ps:
                findings.append(_verdict(ps, sign, f"{what} (SIB-200 zero-shot)",
                                         floor=(statistics.fmean(sib[a]["all"]), statistics.fmean(sib[b]["all"]))))
        return sc

    endpoint_section("\n## 2. Inverse mask schedule (30% → 15% → 5%) vs a constant 15%\n",
                     ["recipe", "constant-mask"],
                     [("recipe − constant-mask", "recipe", "constant-mask", +1,
                       "the inverse mask schedule beats a constant 15% mask")])
    endpoint_section("\n## 3. Annealed sampling with progressive languages vs fixed τ 0.7 on all languages\n",
                     ["recipe", "constant-mask", "mbert-baseline"],
                     [("constant-mask − mbert-baseline (sampling alone)", "constant-mask", "mbert-baseline", +1,
                       "annealed τ with progressive languages beats fixed τ 0.7 on all languages, masks equal"),
                      ("recipe − mbert-baseline (recipe as a whole)", "recipe", "mbert-baseline", +1,
                       "the whole recipe beats the mBERT-style baseline")])

    w("\n## Training loss\n")
    plots.append(_plot_losses(data, files / "training_loss.png"))
    w(f"![training loss]({rel(plots[-1])})\n")

    tier_means = [statistics.fmean(tier_scores(d["mlm"][m])[t] for d in by_seed.values())
                  for by_seed in data.values() for m in next(iter(by_seed.values()))["mlm"] for t in TIERS]
    accuracy_range = (f"Held-out MLM accuracies span {100 * min(tier_means):.0f}–{100 * max(tier_means):.0f}% "
                      f"across the tiers and models above")
    w("\n## Scale, and what a larger run would change\n")
    w("- **Model and tokens.** The `tiny` preset (6 layers, hidden 128, 4 heads, 32,768-token BPE; "
      "5.2M parameters, 1.0M outside the embeddings) sees 3.1–3.6M training tokens per run — "
      "about a million times fewer than "
      "mmBERT's 3T, and the decay phase here is 240k tokens spread over all languages (a few hundred tokens "
      "per decay-only language). " + accuracy_range +
      " — the regime where the model is learning frequent tokens and short-range statistics; the paper's "
      "effects are measured on models that have long left it.")
    w("- **Evaluation.** Decay-only languages hold one held-out document each in the embedded corpus "
      "(≈50–100 tokens, ≈10 masked per language), so their tier score is a mean over ~430 small samples: "
      "stable as an average, not per language. SIB-200 fine-tuning of a model this small barely leaves "
      "the majority class, so it cannot rank the arms here; the paper's XNLI/SIB/F1 gains need a model "
      "whose representations carry meaning.")
    w("- **Expected with more compute.** The mask-schedule and sampling comparisons are about how the "
      "budget is spent late in training; with ~1000× more tokens (a `mmbert-small` run on one GPU for "
      "a day) the decay phase would see thousands of tokens per low-resource language and the tier "
      "differences would be measured on downstream tasks as the paper does. Everything above is rerun "
      "by `runs/reproduce.sh` with a different recipe name in `mmbert.study.ARMS`.")
    w("\n## What the seeds allow us to say\n")
    w("Stated against the paper's direction, only where every seed agrees and |mean| > std:\n")
    for f in findings:
        w(f"- {f}")
    w("")
    notes = Path(logs) / "NOTES.md"
    if notes.is_file():  # the authors' reading of these logs, kept beside them
        w(f"\n## Reading the results\n\n(from `{notes}`)\n")
        w(notes.read_text().strip() + "\n")
    return "\n".join(L) + "\n", plots
