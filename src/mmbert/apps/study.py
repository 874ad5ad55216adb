"""The reproduction study: mmBERT's findings at tiny scale, rerun end to end with one command.

    runs/reproduce.sh                                   # everything, from a clean clone
    mmbert study run --shards out/demo/shards --out out/study --logs runs/study --seeds 0 1 2
    mmbert study report --logs runs/study --out docs/reproduction.md

Arms, each trained with every seed on the embedded corpus's shards (tiny preset):

  recipe           `cpu-demo`: top 12 → top 24 → all languages, τ 0.7 → 0.5 → 0.3, mask 30 → 15 → 5%,
                   three decay variants (decay-eng, decay-cont, decay-all) and their TIES merge
  constant-mask    the recipe with a 15% mask in every phase (decay-all track only)
  mbert-baseline   every language from the start, fixed τ 0.7, fixed 15% mask, same phase structure
  time-shuffled    the recipe's decay-all track with every phase sampling the track's *average*
                   distribution: each language gets the recipe's tokens (and passes over its data),
                   spread uniformly over training — only *when* a language is seen differs
  late-not-last    the recipe's decay-all track with the decay phase's language mix (and mask) moved
                   one window earlier and mid-training's mix at the end: the decay-only languages get the
                   recipe's tokens in a window as late and as dense, but not last — recency vs late
                   introduction
  tau-0.3, tau-1.0 mbert-baseline at another fixed τ: with it, a τ sweep that places the
                   progressive schedule on the exposure/quality trade-off curve
  rep-progressive, constant-mask and mbert-baseline on shards shrunk to at most `rep_cap_tokens` training
  rep-fixed-tau    tokens per decay-only language (`rep_cap_other_tokens` for the others): the repetition
                   regime the paper argues from (fixed τ repeats low-resource data many times, the
                   progressive schedule a few)

Every non-recipe arm trains the decay-all track only, on the same number of tokens, so comparisons
are at equal tokens; arms share seeds (a seed fixes the initial weights). Every model is scored with
the per-language held-out MLM at a fixed 15% masking and seed (`mmbert.eval.mlm`): held-out loss
(nats per masked token) is the primary measure, accuracy secondary, grouped by the phase that
introduced the language in the recipe arm. The decay-all endpoints are also fine-tuned on SIB-200
English and tested zero-shot (`mmbert.eval.runner`). Logs — training time and losses, exposure,
every score — are small JSON files under --logs (committed); `report` builds the page and its plots
from them alone, with intervals from `mmbert.eval.stats`. Stages are reused: a finished training
run, merge or score is not recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mmbert.data.sampling import plan_phase
from mmbert.data.shards import ShardIndex, ShardWriter, open_shard, write_index
from mmbert.eval import data as eval_data
from mmbert.eval.metrics import mean_std
from mmbert.eval.mlm import assign_tiers, evaluate_mlm
from mmbert.eval.runner import TaskSpec, run_suite
from mmbert.eval.stats import hierarchical_bootstrap, holm, separable
from mmbert.export.hf import from_pretrained
from mmbert.merge import DECAY_TIES_DENSITY, merge
from mmbert.train.recipe import get_recipe, resolve_languages
from mmbert.utils import atomic_write, publish_dir

BASE_ARMS = {"recipe": "cpu-demo", "constant-mask": "cpu-demo-constant-mask",
             "mbert-baseline": "cpu-demo-mbert-baseline"}
# arm → (base arm whose recipe it derives from, how): see the module docstring
DERIVED_ARMS = {"time-shuffled": ("recipe", "time-shuffled"), "late-not-last": ("recipe", "late-not-last"),
                "tau-0.3": ("mbert-baseline", "tau"),
                "tau-1.0": ("mbert-baseline", "tau"), "rep-progressive": ("constant-mask", "capped"),
                "rep-fixed-tau": ("mbert-baseline", "capped")}
ARMS = (*BASE_ARMS, *DERIVED_ARMS)
CAPPED_ARMS = tuple(a for a, (_, how) in DERIVED_ARMS.items() if how == "capped")
RECIPE_MODELS = ("mid", "decay-eng", "decay-cont", "decay-all", "ties-merge")
TIERS = ("pretrain", "mid", "decay-only")  # the phase of the recipe arm that introduced a language
ENGLISH = "eng_Latn"
LOGS = Path("runs/study")  # the committed JSON run logs the results page is written from
PAGE = Path("docs/reproduction.md")  # the results page (plots beside it)


@dataclass
class StudyConfig:
    shards: Path  # token shards with a held-out split (`mmbert data prepare`)
    out: Path = Path("out/study")  # training runs and scratch (ignored by git)
    logs: Path = LOGS  # small JSON logs (committed)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    jobs: int = 2  # training runs at a time
    threads: int = 1  # torch threads per training run; scoring, which runs alone after, uses jobs × threads
    data_dir: Path | None = None  # evaluation data (SIB-200); None = $MMBERT_EVAL_DATA or ../shared/data/eval
    density: float = DECAY_TIES_DENSITY  # as `mmbert demo`
    mlm_tokens_per_lang: int = 8192  # held-out tokens scored per language (decay-only ones have ~50–500)
    sib: bool = True
    # the repetition-regime shards keep at most this many training tokens per language (whole
    # documents, at least one): decay-only languages `rep_cap_tokens`, the others `rep_cap_other_tokens`.
    # Measured on the embedded corpus (460 languages) with the cpu-demo budget: fixed τ 0.7 then passes
    # over a decay-only language's data 8.7× (median; 15.8× the most), the progressive schedule 1.7×
    # (6.9×). Capping only the small languages cannot get there: at 3M training tokens fixed τ spends
    # too little on them (≤ 1.7 passes for any cap), so the whole corpus is shrunk, as the paper's
    # regime has the budget exceed the data.
    rep_cap_tokens: int = 250
    rep_cap_other_tokens: int = 50_000
    recipes: dict[str, str] | None = None  # base arm → recipe name or .json (default: BASE_ARMS; tests shrink it)

    def recipe(self, arm: str) -> str:
        if arm in DERIVED_ARMS:
            base, how = DERIVED_ARMS[arm]
            return self.recipe(base) if how == "capped" else str(self.out / "recipes" / f"{arm}.json")
        return (self.recipes or BASE_ARMS)[arm]

    def shards_for(self, arm: str) -> Path:
        return self.out / "shards-capped" if arm in CAPPED_ARMS else self.shards

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / arm / f"seed{seed}"


def models_of(arm: str) -> tuple[str, ...]:
    return RECIPE_MODELS if arm == "recipe" else ("decay-all",)


# ----------------------------------------------------------------------------- stages
def _finished(cfg: StudyConfig, arm: str, seed: int) -> bool:
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
           str(seed), "--shards", str(cfg.shards_for(arm)), "--out", str(run), "--threads", str(cfg.threads),
           "--no-eval"]
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


def time_shuffled_recipe(rec, counts: dict[str, int]):
    """The recipe's decay-all track with every phase sampling the track's average distribution:
    language ℓ's share is Σ_phases p_ℓ·tokens / Σ tokens, so its expected tokens (and passes over
    its data) over the track equal the recipe's; masks, θ, sequence lengths and LR are unchanged."""
    track = rec.tracks()["decay-all"]
    exposure: dict[str, float] = {}
    for p in track:
        for lang, prob in _mix(p, counts).items():
            exposure[lang] = exposure.get(lang, 0.0) + prob * p.tokens
    total = sum(exposure.values())
    shares = {k: v / total for k, v in sorted(exposure.items())}
    phases = tuple(dataclasses.replace(p, languages=tuple(shares), shares=shares, language_weights={}, epoch_cap=None)
                   for p in track)
    # the same track shape (main phases, then the decay-all variant), so runs, exports and logs line up
    return rec.replace(name=f"{rec.name}-time-shuffled", phases=phases[:-1], variants={"decay-all": phases[-1:]})


def _mix(p, counts: dict[str, int]) -> dict[str, float]:
    """A phase's sampling distribution over languages, as explicit shares."""
    langs = resolve_languages(p.languages, counts, p.shares)
    plan = plan_phase(counts, langs, p.temperature, weights=p.language_weights or None, shares=p.shares or None)
    return dict(sorted(plan.as_dict().items()))


def late_not_last_recipe(rec, counts: dict[str, int]):
    """The recipe's decay-all track with the decay phase's language mix moved one window earlier:
    the last `decay` tokens of mid-training sample decay-all's mix (every language, τ 0.3) at its 5%
    mask, and the final decay phase samples mid-training's mix — so every language gets the recipe's
    tokens, the decay-only languages in a window of the same length, density and mask rate that ends
    `decay` tokens before the end instead of at it. LR, θ and sequence length stay where they were
    (by position). Against the recipe this separates recency (being seen last) from late
    introduction; against time-shuffled, late-but-not-last from spread-over-training."""
    pre, mid, decay = rec.tracks()["decay-all"]
    if mid.lr_warmup_tokens or mid.lr_decay != "none" or mid.tokens <= decay.tokens:
        raise ValueError(f"late-not-last splits the mid phase at a constant LR; recipe {rec.name!r}'s mid phase "
                         f"has warm-up/decay or is not longer than its decay phase")
    mid_mix, decay_mix = _mix(mid, counts), _mix(decay, counts)

    def sampling(mix: dict[str, float]) -> dict:
        return dict(languages=tuple(mix), shares=mix, language_weights={}, epoch_cap=None)

    mid_a = dataclasses.replace(mid, tokens=mid.tokens - decay.tokens)
    mid_b = dataclasses.replace(mid, name="mid-late", tokens=decay.tokens, mask_rate=decay.mask_rate,
                                **sampling(decay_mix))
    last = dataclasses.replace(decay, **sampling(mid_mix))
    return rec.replace(name=f"{rec.name}-late-not-last", phases=(pre, mid_a, mid_b), variants={"decay-all": (last,)})


def fixed_tau_recipe(rec, tau: float):
    """A fixed-τ arm's recipe at another τ (every phase)."""
    return rec.replace(name=f"{rec.name}-tau{tau:g}", phases=tuple(dataclasses.replace(p, temperature=tau)
                                                                   for p in rec.phases),
                       variants={k: tuple(dataclasses.replace(p, temperature=tau) for p in v)
                                 for k, v in rec.variants.items()})


def cap_shards(src: Path, dst: Path, languages: Sequence[str], cap_tokens: int, other_cap_tokens: int | None = None
               ) -> None:
    """Copy shards, keeping at most `cap_tokens` training tokens (whole documents, at least one) of
    each language in `languages` and at most `other_cap_tokens` (None: all) of every other language;
    held-out splits are copied unchanged."""
    if (dst / "index.json").is_file():
        return
    index = ShardIndex.load(src)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    with publish_dir(dst) as tmp:
        for lang in index.languages:
            counts[lang] = {}
            for split in ("train", "heldout"):
                if not index.has(lang, split):
                    continue
                shard = open_shard(src, lang, split, index=index)
                with ShardWriter(tmp, lang, split, index.dtype) as w:
                    kept = 0
                    cap = cap_tokens if lang in languages else other_cap_tokens
                    for i in range(len(shard)):
                        if split == "train" and cap is not None and kept and kept + len(shard[i]) > cap:
                            break
                        w.add(shard[i])
                        kept += len(shard[i])
                counts[lang][split] = w.counts
        for extra in src.iterdir():  # the tokenizer the shards were made with travels with them
            if extra.is_file() and extra.name != "index.json":
                shutil.copy2(extra, tmp / extra.name)
        write_index(tmp, counts, index.dtype, index.vocab_size, index.tokenizer)


def prepare_arms(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
    """The derived arms' inputs: recipe JSONs (time-shuffled, late-not-last, fixed τ) and the capped shards."""
    derived = [a for a in cfg.arms if a in DERIVED_ARMS]
    if not derived:
        return
    index = ShardIndex.load(cfg.shards)
    counts = {lang: index.tokens(lang) for lang in index.languages}
    (cfg.out / "recipes").mkdir(parents=True, exist_ok=True)
    for arm in derived:
        base, how = DERIVED_ARMS[arm]
        if how == "capped":
            continue
        rec = get_recipe(cfg.recipe(base))
        rec = (time_shuffled_recipe(rec, counts) if how == "time-shuffled" else
               late_not_last_recipe(rec, counts) if how == "late-not-last" else fixed_tau_recipe(rec, float(arm[4:])))
        path = Path(cfg.recipe(arm))
        if not path.is_file() or path.read_text() != rec.to_json():
            atomic_write(path, rec.to_json())
    if any(a in CAPPED_ARMS for a in derived):
        tier_of = tier_of_languages(cfg, counts)
        low = [lang for lang, t in tier_of.items() if t == "decay-only"]
        log(f"[study] repetition-regime shards: {len(low)} decay-only languages capped at {cfg.rep_cap_tokens} "
            f"training tokens, the others at {cfg.rep_cap_other_tokens}")
        cap_shards(cfg.shards, cfg.out / "shards-capped", low, cfg.rep_cap_tokens, cfg.rep_cap_other_tokens)


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
    rec = get_recipe(cfg.recipe(arm))
    trained = sum(p.tokens for p in rec.phases) + sum(p.tokens for v in rec.variants.values() for p in v)
    return {"arm": arm, "recipe": rec.name, "seed": seed, "tokens_trained": trained, "tracks": tracks,
            "tier_tokens": tier_tokens(rec, counts, tier_of), "loss_curve": thin, **timing}


def tier_tokens(rec, counts: dict[str, int], tier_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Expected training tokens per tier on each track: Σ over its phases of budget × Σ_tier p_ℓ
    (p ∝ w·n^τ over the phase's languages, as the loader samples)."""
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
        # how often the tier's languages are repeated over the track (passes over their training data):
        # the most-repeated language, and the median over the tier (0 for languages never drawn)
        by_tier = {t: [epochs.get(lang, 0.0) for lang, tt in tier_of.items() if tt == t and lang in counts]
                   for t in TIERS}
        out[track]["max_epochs"] = {t: round(max(v, default=0.0), 3) for t, v in by_tier.items()}
        out[track]["median_epochs"] = {t: round(statistics.median(v), 3) if v else 0.0 for t, v in by_tier.items()}
    return out


def merge_all(cfg: StudyConfig, log: Callable[[str], None] = print) -> None:
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
    return get_recipe(cfg.recipe("recipe")).language_tiers()


def tier_of_languages(cfg: StudyConfig, counts: dict[str, int]) -> dict[str, str]:
    """language → its study tier, for the shards' per-language training token counts."""
    return assign_tiers(counts, study_tiers(cfg))


def _round(x: float, n: int = 5) -> float:
    return round(x, n) if isinstance(x, float) and math.isfinite(x) else x


def sib_languages(root: Path, tier_of: dict[str, str], per_tier: int = 24) -> tuple[str, ...]:
    """The SIB-200 test languages the study scores: English, and up to `per_tier` of each tier
    (pretrain, mid, decay-only, not in the corpus), spread evenly over the sorted tags. Scoring all
    205 costs ~4× more and, at this model size, says no more (the scores sit at the majority class)."""
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
    """Score every model of every finished run; write logs/<arm>-seed<k>.json after each score. On
    all the cores the study was given (jobs × threads: training is over), the caller's thread count
    restored after (a process that forks later must not hold a larger OpenMP pool than it had)."""
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads * cfg.jobs)
    try:
        _evaluate_all(cfg, log)
    finally:
        torch.set_num_threads(old)


def _evaluate_all(cfg: StudyConfig, log: Callable[[str], None]) -> None:
    index = ShardIndex.load(cfg.shards)
    langs = [lang for lang in index.languages if index.has(lang, "heldout")]
    counts = {lang: index.tokens(lang) for lang in index.languages}
    tier_of = tier_of_languages(cfg, counts)
    root = eval_data.resolve_data_dir(cfg.data_dir)
    sib = cfg.sib and (root / "sib200").is_dir()
    if cfg.sib and not sib:
        log(f"[study] SIB-200 skipped: {root / 'sib200'} not found (pass --data-dir)")
    cfg.logs.mkdir(parents=True, exist_ok=True)
    arm_counts = {cfg.shards: counts}
    for seed in cfg.seeds:
        for arm in cfg.arms:
            path = cfg.logs / f"{arm}-seed{seed}.json"
            if not _finished(cfg, arm, seed):
                log(f"[study] {arm} seed {seed} has not finished training; not scored")
                continue
            entry = json.loads(path.read_text()) if path.is_file() else {}
            src = cfg.shards_for(arm)  # exposure is counted on the shards the arm trained on
            if src not in arm_counts:
                ix = ShardIndex.load(src)
                arm_counts[src] = {lang: ix.tokens(lang) for lang in ix.languages}
            train_log = json.loads(json.dumps(_train_log(cfg, arm, seed, arm_counts[src], tier_of)))  # as stored
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
                    m = from_pretrained(_model_path(cfg, arm, seed, model))
                    r = evaluate_mlm(m, cfg.shards, langs, max_tokens_per_lang=cfg.mlm_tokens_per_lang, seed=0,
                                     seq_len=256, tiers=study_tiers(cfg))
                    entry["mlm"][model] = {
                        "languages": {k: {"accuracy": _round(v["accuracy"]), "loss": _round(v["loss"], 4),
                                          "masked": v["masked_tokens"], "tier": v["tier"]}
                                      for k, v in r["languages"].items()},
                        "settings": {k: r[k] for k in ("seed", "mask_rate", "max_tokens_per_lang", "seq_len")}}
                    save()
            if sib and "decay-all" not in entry["sib200"]:
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
    prepare_arms(cfg, log)
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


TIER_COLS = ("decay-only", "mid", "pretrain", "all", "English")
METRICS = {"loss": "held-out loss (nats per masked token; lower is better)",
           "accuracy": "held-out accuracy ×100 (higher is better)"}
BOOT_SEED = 0  # the page's intervals are deterministic: regenerating it from the logs gives the same bytes


def tier_cells(mlm: dict, metric: str, tier: str) -> dict[str, float]:
    """language → score for a tier ("all": every language, "English": eng_Latn), over languages with
    masked tokens."""
    langs = {k: v for k, v in mlm["languages"].items() if v["masked"] > 0}
    if tier == "English":
        langs = {k: v for k, v in langs.items() if k == ENGLISH}
    elif tier != "all":
        langs = {k: v for k, v in langs.items() if v["tier"] == tier}
    return {k: float(v[metric]) for k, v in langs.items()}


def tier_scores(mlm: dict, metric: str = "accuracy") -> dict[str, float]:
    """Macro score per tier (mean over languages), token-weighted ('micro') per tier, all, English."""
    res: dict[str, float] = {}
    langs = mlm["languages"]
    for tier in TIERS:
        vals = [v for v in langs.values() if v["tier"] == tier and v["masked"] > 0]
        if vals:
            res[tier] = statistics.fmean(v[metric] for v in vals)
            res[f"{tier} (micro)"] = sum(v[metric] * v["masked"] for v in vals) / sum(v["masked"] for v in vals)
    res["all (macro)"] = res["all"] = statistics.fmean(v[metric] for v in langs.values() if v["masked"] > 0)
    if ENGLISH in langs:
        res["English"] = langs[ENGLISH][metric]
    return res


def sib_by_tier(sib: dict, tier_of: dict[str, str]) -> dict[str, float]:
    langs = sib["languages"]
    res = {"all": sib["average"]}
    for tier in (*TIERS, "not in corpus"):
        vals = [a for lang, a in langs.items() if tier_of.get(lang, "not in corpus") == tier]
        if vals:
            res[tier] = statistics.fmean(vals)
    return res


def fmt_ms(xs: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([x * scale for x in xs])
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}"


def _has(data: dict, arm: str, model: str = "decay-all") -> bool:
    return arm in data and all(model in d["mlm"] for d in data[arm].values())


def _table(data: dict, arm: str, model: str, metric: str, tier: str) -> dict[int, dict[str, float]]:
    return {seed: tier_cells(d["mlm"][model], metric, tier) for seed, d in data[arm].items()}


def contrast(data: dict, a: tuple[str, str], b: tuple[str, str], tier: str, metric: str = "loss") -> dict:
    """How much better (arm, model) `a` is than `b` on a tier, paired by seed and language: b − a for
    loss, a − b for accuracy (positive = a better), with a hierarchical-bootstrap interval."""
    ta, tb = _table(data, *a, metric, tier), _table(data, *b, metric, tier)
    sign = -1.0 if metric == "loss" else 1.0
    diffs = {s: {k: sign * (ta[s][k] - tb[s][k]) for k in ta[s] if k in tb[s]} for s in ta if s in tb}
    return hierarchical_bootstrap({"d": diffs}, seed=BOOT_SEED)


def retention(data: dict, tier: str = "decay-only", metric: str = "loss") -> dict:
    """(mid − merge) / (mid − decay-all) on the tier's mean loss: the share of decay-all's gain over its
    branch point that the TIES merge keeps (1 = all of it)."""
    t = {m: _table(data, "recipe", m, metric, tier) for m in ("mid", "ties-merge", "decay-all")}
    return hierarchical_bootstrap({"b": t["mid"], "m": t["ties-merge"], "a": t["decay-all"]},
                                  lambda a, m, b: _ratio(b - m, b - a) if metric == "loss" else _ratio(m - b, a - b),
                                  seed=BOOT_SEED)


def _ratio(x: float, y: float) -> float:
    return x / y if y else float("nan")  # no gain to keep: undefined, not infinite


def _fmt_ci(r: dict, scale: float = 1.0, digits: int = 3) -> str:
    lo, hi = r["ci"]
    return f"{r['estimate'] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"


def _reading(r: dict, better: str, worse: str) -> str:
    if not separable(r["ci"]):
        return "not separable (the interval covers 0)"
    return f"{better} better" if r["estimate"] > 0 else f"{worse} better"


def write_report(logs: Path = LOGS, out_md: Path = PAGE, log: Callable[[str], None] = print) -> Path:
    """The results page and its plots, from the logs alone."""
    data = load_logs(logs)
    text, plots = render(data, out_md.parent / (out_md.stem + "_files"), logs, out_md.parent)
    atomic_write(out_md, text)
    log(f"[study] wrote {out_md} and {len(plots)} plots")
    return out_md


# ----------------------------------------------------------------------------- the page
MAJORITY_SIB = 0.25  # SIB-200 test: the largest of the 7 topics is 25% of the sentences

# the questions the study answers, fixed before any number (the page states them first)
PRIMARY = (
    ("P1", "Timing at equal exposure: is a language better learned when it enters late (recipe) than when "
           "the same tokens are spread over all of training (time-shuffled)?",
     ("recipe", "decay-all"), ("time-shuffled", "decay-all"), "decay-only"),
    ("P2", "The repetition regime: with little low-resource data, does the progressive schedule beat fixed "
           "τ 0.7 on all languages, which repeats that data many times?",
     ("rep-progressive", "decay-all"), ("rep-fixed-tau", "decay-all"), "decay-only"),
)
SECONDARY = (  # (label, a, b): Holm-corrected together, on every tier
    ("decay-all vs its branch point (mid)", ("recipe", "decay-all"), ("recipe", "mid")),
    ("decay-all vs decay-eng", ("recipe", "decay-all"), ("recipe", "decay-eng")),
    ("decay-all vs decay-cont", ("recipe", "decay-all"), ("recipe", "decay-cont")),
    ("TIES merge vs decay-all", ("recipe", "ties-merge"), ("recipe", "decay-all")),
    ("recipe vs time-shuffled", ("recipe", "decay-all"), ("time-shuffled", "decay-all")),
    ("recency: recipe (late, last) vs late-not-last", ("recipe", "decay-all"), ("late-not-last", "decay-all")),
    ("late-not-last vs time-shuffled", ("late-not-last", "decay-all"), ("time-shuffled", "decay-all")),
    ("inverse mask vs constant 15% (recipe vs constant-mask)", ("recipe", "decay-all"), ("constant-mask", "decay-all")),
    ("progressive vs fixed τ 0.7 at this budget (constant-mask vs mbert-baseline)", ("constant-mask", "decay-all"),
     ("mbert-baseline", "decay-all")),
    ("progressive vs fixed τ 0.7, repetition regime", ("rep-progressive", "decay-all"), ("rep-fixed-tau", "decay-all")),
)
TAU_ARMS = (("tau-0.3", 0.3), ("mbert-baseline", 0.7), ("tau-1.0", 1.0))


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _plot_losses(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
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


def _plot_tau_sweep(data: dict, path: Path) -> Path | None:
    """Per tier: expected training tokens on the decay-all track (x, log) against held-out loss (y),
    for the fixed-τ arms (a line) and the progressive constant-mask arm (a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [(a, t) for a, t in TAU_ARMS if _has(data, a)]
    if len(arms) < 2:
        return None
    fig, axes = plt.subplots(1, len(TIERS), figsize=(4 * len(TIERS), 3.6))
    for ax, tier in zip(axes, TIERS):
        def point(arm: str) -> tuple[float, float]:
            first = data[arm][min(data[arm])]["train"]["tier_tokens"]["decay-all"]
            loss = statistics.fmean(tier_scores(d["mlm"]["decay-all"], "loss")[tier] for d in data[arm].values())
            return first[tier], loss
        pts = [point(a) for a, _ in arms]
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color="C2", label="fixed τ (all languages)")
        for (x, y), (_, t) in zip(pts, arms):
            ax.annotate(f"τ {t:g}", (x, y), fontsize=8, textcoords="offset points", xytext=(4, 4))
        if _has(data, "constant-mask"):
            x, y = point("constant-mask")
            ax.plot([x], [y], "*", ms=12, color="C0", label="progressive (constant-mask arm)")
        ax.set_xscale("log")
        ax.set_title(f"{tier} tier", fontsize=10)
        ax.set_xlabel("training tokens to the tier (decay-all track)")
    axes[0].set_ylabel("held-out loss (nats/token)")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def render(data: dict, files: Path, logs: Path, page_dir: Path) -> tuple[str, list[Path]]:
    """The page's markdown (its plots written into `files`, linked relative to `page_dir`) and the plots."""
    plots: list[Path] = []
    rel = lambda p: os.path.relpath(p, page_dir)  # noqa: E731
    L = _page_intro(data, logs) + _arms_section(data) + _primary_section(data) + _scores_section(data)
    L += _secondary_section(data)
    L += _tau_section(data, files, rel, plots)
    L += _sib_section(data)
    w = L.append
    w("## Training loss\n")
    plots.append(_plot_losses(data, files / "training_loss.png"))
    w(f"![training loss]({rel(plots[-1])})\n")

    w("## Scale\n")
    w("The `tiny` preset (6 layers, hidden 128; 5.2M parameters, 1.0M outside the embeddings) sees "
      "3.1–3.6M training tokens per run, about a million times fewer than mmBERT's 3T. The questions above "
      "are about how a budget is spent; a `mmbert-small` run of the same study on a GPU would measure them "
      "where the paper did (downstream tasks, thousands of tokens per low-resource language).\n")
    notes = Path(logs) / "NOTES.md"
    if notes.is_file():  # the authors' reading of these logs, kept beside them
        w(f"\n## Reading the results\n\n(from `{notes}`)\n")
        w(notes.read_text().strip() + "\n")
    return "\n".join(L) + "\n", plots


# The page's sections: each returns its lines (an entry may hold several, joined with "\n").
def _page_intro(data: dict, logs: Path) -> list[str]:
    """Title, method, and the questions, stated before any number."""
    L: list[str] = []
    w = L.append
    all_seeds = sorted({s for by in data.values() for s in by})
    missing = [a for a in ARMS if a not in data]
    w("# Reproducing mmBERT's findings at tiny scale\n")
    w(f"Every number on this page is computed by `mmbert study report` from the JSON run logs in "
      f"`{logs}/` (one per arm and seed), written by `mmbert study run` (`runs/reproduce.sh` reruns it all). "
      f"Seeds: {', '.join(map(str, all_seeds))}. The primary measure is **held-out loss** (nats per masked "
      f"token at a fixed 15% masking; lower is better), accuracy is secondary. Differences are paired by seed "
      f"and language; intervals are 95% from a hierarchical (seed, then language) bootstrap with "
      f"Satterthwaite degrees of freedom (`mmbert.eval.stats`: about 5% false calls on null data, where the "
      f"earlier 'all seeds agree and |mean| > sd' rule made about 21%). A difference is stated only where its "
      f"interval excludes 0; otherwise the page says *not separable*.\n")
    if missing:
        w(f"Arms without logs yet (not run): {', '.join(missing)}; the sections that need them say so.\n")

    w("## Questions, stated before the numbers\n")
    for key, q, a, b, tier in PRIMARY:
        w(f"- **{key}.** {q} Contrast: held-out loss of `{b[0]}` − `{a[0]}` on the {tier} tier "
          f"(positive = {a[0]} better).")
    w("- **P3.** How much of the decay-all variant's gain on decay-only languages does the TIES merge keep? "
      "Retention (mid − merge) / (mid − decay-all) of the tier's mean held-out loss (1 = all of it).")
    w(f"\nEverything else ({len(SECONDARY)} contrasts × {len(TIER_COLS)} tiers) is secondary and "
      f"Holm-corrected as one family.\n")
    return L


def _arms_section(data: dict) -> list[str]:
    """Per arm: recipe, tracks, tokens, time; then the exposure per tier on the decay-all track."""
    L: list[str] = []
    w = L.append
    w("## Arms and compute\n")
    w("| arm | recipe | tracks | tokens per run | wall s per run (mean) | CPU s per run (mean) | seeds |")
    w("|---|---|---|---:|---:|---:|---|")
    total_tokens, total_cpu, n_runs, n_no_cpu = 0, 0.0, 0, 0
    for arm in [a for a in ARMS if a in data]:
        by_seed = data[arm]
        first = by_seed[min(by_seed)]["train"]
        walls = [d["train"]["wall_s"] for d in by_seed.values() if d["train"].get("wall_s")]
        cpus = [d["train"]["cpu_s"] for d in by_seed.values() if d["train"].get("cpu_s")]
        total_tokens += first["tokens_trained"] * len(by_seed)
        total_cpu += statistics.fmean(cpus) * len(by_seed) if cpus else 0.0
        n_runs += len(by_seed)
        n_no_cpu += len(by_seed) - len(cpus)
        w(f"| {arm} | `{first['recipe']}` | {', '.join(sorted(first['tracks']))} | {first['tokens_trained']:,} | "
          f"{statistics.fmean(walls) if walls else float('nan'):.0f} | "
          f"{statistics.fmean(cpus) if cpus else float('nan'):.0f} | {', '.join(map(str, sorted(by_seed)))} |")
    est = (f" ({n_no_cpu} of the {n_runs} runs were timed by wall clock only; their CPU time is taken as their "
           f"arm's mean)") if n_no_cpu else ""
    w(f"\nTotal: {total_tokens / 1e6:.1f}M training tokens, {total_cpu / 60:.0f} CPU-minutes of training{est}, "
      f"one thread per run; scoring is not included.\n")

    w("Exposure on the decay-all track (the same for every seed): expected training tokens per tier, and "
      "passes over the tier's training data — median language / most-repeated language:\n")
    w("| arm | " + " | ".join(TIERS) + " |")
    w("|---|" + "---:|" * len(TIERS))
    for arm in [a for a in ARMS if a in data]:
        tt = data[arm][min(data[arm])]["train"].get("tier_tokens", {}).get("decay-all")
        if tt:
            med = tt.get("median_epochs", {})
            w(f"| {arm} | " + " | ".join(
                f"{tt[t]:,} ({med[t]:.2f}× / {tt['max_epochs'][t]:.2f}×)" if t in med
                else f"{tt[t]:,} (– / {tt['max_epochs'][t]:.2f}×)" for t in TIERS) + " |")
    w("")
    return L


def _primary_section(data: dict) -> list[str]:
    """P1, P2 (contrasts on their tier and on all languages) and P3 (the merge's retention)."""
    L: list[str] = []
    w = L.append
    w("## Primary results\n")
    w("| question | contrast (positive = first better) | estimate [95% CI], nats/token | p | reading |")
    w("|---|---|---|---:|---|")
    for key, _, a, b, tier in PRIMARY:
        if not (_has(data, a[0], a[1]) and _has(data, b[0], b[1])):
            w(f"| {key} | {a[0]} vs {b[0]}, {tier} | – | – | not run: no logs for "
              f"{', '.join(x for x in (a[0], b[0]) if x not in data)} |")
            continue
        for t in (tier, "all"):
            r = contrast(data, a, b, t)
            w(f"| {key} | {a[0]} vs {b[0]}, {t} tier | {_fmt_ci(r)} | {r['p']:.3g} | {_reading(r, a[0], b[0])} |")
    if _has(data, "recipe", "ties-merge"):
        for metric in ("loss", "accuracy"):
            r = retention(data, "decay-only", metric)
            lo, hi = r["ci"]
            if not math.isfinite(r["estimate"]):
                w(f"| P3 | TIES retention on decay-only, by {metric} | – | – | undefined: decay-all gained nothing "
                  f"over mid to keep |")
                continue
            w(f"| P3 | TIES retention on decay-only, by {metric} | {r['estimate']:.2f} [{lo:.2f}, {hi:.2f}] | – | "
              f"{'keeps some of the gain' if lo > 0 else 'not separable from 0'}"
              f"{'; less than all of it' if hi < 1 else ''} |")
    else:
        w("| P3 | TIES retention | – | – | not run: no recipe-arm logs with a merge |")
    w("")
    return L


def _scores_section(data: dict) -> list[str]:
    """Mean ± std over seeds of every model's tier scores, per metric; then what the tiers are."""
    L: list[str] = []
    w = L.append
    for metric, title in METRICS.items():
        scale, digits = (1.0, 3) if metric == "loss" else (100.0, 2)
        w(f"## Scores: {title}\n")
        w("Mean ± std over seeds of the macro average over each tier's languages:\n")
        w("| arm | model | " + " | ".join(TIER_COLS) + " |")
        w("|---|---|" + "---:|" * len(TIER_COLS))
        for arm in [a for a in ARMS if a in data]:
            for model in models_of(arm):
                if not _has(data, arm, model):
                    continue
                rows = [tier_scores(d["mlm"][model], metric) for d in data[arm].values()]
                w(f"| {arm} | {model} | " + " | ".join(
                    fmt_ms([r[c] for r in rows], scale, digits) if all(c in r for r in rows) else "–"
                    for c in TIER_COLS) + " |")
        w("")
    if "recipe" in data:
        n_tier = {t: sum(1 for v in next(iter(data["recipe"].values()))["mlm"]["mid"]["languages"].values()
                         if v["tier"] == t) for t in TIERS}
        w(f"Tiers (from the recipe arm): **pretrain** = the {n_tier['pretrain']} languages of the pretraining "
          f"phase, **mid** = the {n_tier['mid']} added at mid-training, **decay-only** = the "
          f"{n_tier['decay-only']} that only decay-all trains on. A decay-only language holds one held-out "
          f"document (≈10 masked tokens), so its tier score is a mean over many small samples.\n")
    return L


def _secondary_section(data: dict) -> list[str]:
    """The secondary contrasts on every tier, Holm-corrected as one family ([] when none can be run)."""
    results: dict[tuple[str, str], dict] = {}
    for label, a, b in SECONDARY:
        if _has(data, *a) and _has(data, *b):
            for t in TIER_COLS:
                results[(label, t)] = contrast(data, a, b, t)
    if not results:
        return []
    L: list[str] = []
    w = L.append
    adj = holm({f"{k[0]}|{k[1]}": r["p"] for k, r in results.items()})
    w("## Secondary contrasts (held-out loss, Holm-corrected)\n")
    w(f"{len(results)} contrasts in one family; positive = the first model better (lower loss), nats/token.\n")
    w("| contrast | " + " | ".join(TIER_COLS) + " |")
    w("|---|" + "---|" * len(TIER_COLS))
    for label, _, _ in SECONDARY:
        if (label, TIER_COLS[0]) not in results:
            continue
        cells = []
        for t in TIER_COLS:
            r = results[(label, t)]
            mark = "**" if separable(r["ci"]) and adj[f"{label}|{t}"] < 0.05 else ""
            cells.append(f"{mark}{_fmt_ci(r)}{mark} (p_Holm {adj[f'{label}|{t}']:.2g})")
        w(f"| {label} | " + " | ".join(cells) + " |")
    w("\nBold: the interval excludes 0 and the Holm-adjusted p < 0.05.\n")
    return L


def _tau_section(data: dict, files: Path, rel: Callable[[Path], str], plots: list[Path]) -> list[str]:
    """The τ sweep's plot (appended to `plots`) or what it still needs."""
    L = ["## Where the progressive schedule sits on the exposure/quality curve\n"]
    tau_plot = _plot_tau_sweep(data, files / "tau_sweep.png")
    if tau_plot is None:
        L.append(f"Needs at least two of the fixed-τ arms ({', '.join(a for a, _ in TAU_ARMS)}); "
                 f"present: {', '.join(a for a, _ in TAU_ARMS if a in data) or 'none'}.\n")
        return L
    plots.append(tau_plot)
    L.append("Fixed τ on all languages trades exposure between tiers; the progressive schedule (constant-mask "
             "arm: same masks, same tokens) is one point. A point below the fixed-τ line at its exposure is a gain "
             "from *when* languages are seen, not from how much.\n")
    L.append(f"![τ sweep]({rel(tau_plot)})\n")
    return L


def _sib_section(data: dict) -> list[str]:
    """SIB-200 zero-shot of the decay-all endpoints (secondary; a floor check), for the arms scored on it."""
    sib_arms = [a for a in ARMS if a in data and all("decay-all" in d.get("sib200", {}) for d in data[a].values())]
    if not sib_arms:
        return []
    L: list[str] = []
    w = L.append
    first = data[sib_arms[0]][min(data[sib_arms[0]])]
    tier_of = {k: v["tier"] for k, v in first["mlm"]["decay-all"]["languages"].items()}
    w("## SIB-200 zero-shot (decay-all endpoints)\n")
    w("| arm | all | " + " | ".join(TIERS) + " |")
    w("|---|---:|" + "---:|" * len(TIERS))
    means = []
    for a in sib_arms:
        rows = [sib_by_tier(d["sib200"]["decay-all"], tier_of) for d in data[a].values()]
        means.append(statistics.fmean(r["all"] for r in rows))
        w(f"| {a} | {fmt_ms([r['all'] for r in rows])} | " +
          " | ".join(fmt_ms([r[t] for r in rows]) if t in rows[0] else "–" for t in TIERS) + " |")
    if all(abs(m - MAJORITY_SIB) < 0.01 for m in means):
        w("\nEvery arm scores the majority class (25%) to within a point: SIB-200 cannot rank these "
          "models, and the page draws no conclusion from it.\n")
    else:
        w("")
    return L
