"""The pretraining loop: one readable function per track of phases.

    mmbert pretrain --recipe cpu-demo --shards out/shards --out out/run            # CPU, ≈15 min
    torchrun --nproc_per_node 8 -m mmbert.cli pretrain --recipe mmbert --preset mmbert-base \
        --shards /data/shards --out /runs/mmbert [--parallel fsdp] [--compile] [--resume]

`train()` checks its inputs, opens the run directory, and runs the recipe's main phases
(pretrain → mid) as the "main" track, then every decay variant as its own track that starts from
the main track's final checkpoint. What a launch fixed is one `RunSpec`; a track's state (model,
optimizer, data stream, position) is one `Trainer`; `_run_track` is the loop, top to bottom. Each
step: schedule values from the phase and the tokens seen in it (schedules.py) → micro-batches from
the loader (made by a background thread while the previous step computed; same calls, same order)
→ `train_step` (accumulation, loss / global masked-token count, clip, StableAdamW). At marked
points: metrics.jsonl, per-language held-out MLM eval, checkpoints (atomic, keep-last-K, phase ends
kept), a Hugging Face export at each phase end (phase_export.py). A non-finite loss stops the run
with the last good checkpoint named. Resume is exact: the loader, optimizer, RNG and schedule
position come back from the checkpoint, and on CPU the losses after a resume equal the
uninterrupted run's bit for bit.

Run directory:
  run.json                      what this run is (recipe, model config, seed, data) — the guard (rundir.py)
  metrics.jsonl                 one JSON record per step ("train") and per eval ("eval") (rundir.py)
  checkpoints/<track>/step_*/   see checkpoint.py
  export/<phase>/               HF model directory at each phase end (re-made on resume if a kill cut it off)
  plots/*.png, summary.md       plots.py
  ../.<run>.lock                while a process writes the run (utils.RunLock): a second one is refused
Every file and directory is published by one rename after an fsync (utils), so a kill anywhere
resumes to the uninterrupted run's end state byte for byte (tests/train/test_crash.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmbert.data.loader import LoaderSpec, MLMLoader, StreamPhase, gather_state
from mmbert.data.shards import ShardIndex, shards_tokenizer
from mmbert.eval.mlm import evaluate_mlm
from mmbert.model import build_model
from mmbert.model.config import EncoderConfig
from mmbert.threads import ThreadPolicy
from mmbert.train import checkpoint as ckpt
from mmbert.train.flops import peak_flops, step_flops
from mmbert.train.optim import build_optimizer, set_lr_and_weight_decay
from mmbert.train.parallel import Dist, barrier, cleanup, init_distributed, parallelize
from mmbert.train.phase_export import export_phase, phase_card, remake_exports
from mmbert.train.plots import make_plots
from mmbert.train.recipe import Phase, Recipe, RecipeError, resolve_languages, select_tracks, validate_recipe
from mmbert.train.rundir import Metrics, RunDirError, open_run_dir, run_lr_scale
from mmbert.train.schedules import batch_rows_at, lr_at, mask_rate_at, temperature_at
from mmbert.step import StepStats, mlm_loss_fn, train_step
from mmbert.utils import RunLock, unwrap

__all__ = ["RunDirError", "RunSpec", "Trainer", "TrainingDiverged", "train"]


class TrainingDiverged(ValueError):
    """The loss, gradient or weights became non-finite (the message names the last good checkpoint
    and how to continue from it with a lower learning rate)."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ train

def train(recipe: Recipe, config: EncoderConfig, shards: str | os.PathLike, out: str | os.PathLike, *,
          seed: int = 0, resume: bool = False, phases: Sequence[str] | None = None,
          micro_batch_tokens: int | None = None, parallel: str = "auto", compile: bool = False,
          device: str | None = None, keep_last: int = 3, stop_at_step: int | None = None,
          eval: bool = True, progress: bool = True, plots: bool = True, threads: int | None = None,
          lr_scale: float | None = None, lanes: int | None = None) -> dict[str, Any]:
    """Run the recipe's tracks into `out`; returns {"tracks": {name: {"step", "tokens", "loss"}}}.

    micro_batch_tokens: tokens per micro-batch per rank (memory knob; the global batch comes from the
    recipe). stop_at_step: end a track after this global step without saving — a simulated kill.
    lr_scale: multiply the recipe's learning rate by this from now on (e.g. to continue past a
    divergence with --resume); recorded in run.json and kept by later resumes until given again.
    lanes: packing lanes of the data stream (mmbert.data.loader), default the world size, so that
    each rank packs only its own rows; a resume keeps the checkpoint's. The batches depend on it,
    not on the world size: a 1-process run with lanes=W sees the batches of a W-rank run.
    Only one process writes a run directory at a time (utils.RunLock, held for the whole run); a
    directory holding anything else is refused (RunDirError) before a byte is written.
    """
    shards, out = Path(shards), Path(out)
    d = init_distributed(device)
    index, counts = _check_inputs(recipe, config, shards)
    tracks = select_tracks(recipe, phases)
    if lr_scale is not None and not (math.isfinite(lr_scale) and lr_scale > 0):
        raise RecipeError(f"--lr-scale must be a positive number (e.g. 0.5 halves the learning rate), got {lr_scale}")
    tokenizer = shards_tokenizer(index, shards)  # written into every phase-end export
    identity = {"recipe": recipe.to_dict(), "model": config.to_dict(), "seed": seed, "data": str(shards.resolve())}  # "data": the key old runs have
    with contextlib.ExitStack() as held:
        if d.is_main:
            held.enter_context(RunLock(out))
            open_run_dir(out, identity, resume, lr_scale=lr_scale,
                         launch={"world_size": d.world_size, "device": str(d.device), "resume": resume,
                                 "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        barrier(d)
        run = RunSpec(recipe=recipe, config=config, shards=shards, out=out, counts=counts, d=d,
                      metrics=Metrics(out, enabled=d.is_main), tokenizer=tokenizer, seed=seed,
                      micro_tokens=micro_batch_tokens or (16384 if d.device.type == "cuda" else 4096),
                      lr_scale=run_lr_scale(out), parallel=parallel, compile=compile, keep_last=keep_last,
                      stop_at_step=stop_at_step, eval=eval, progress=progress, threads=threads, lanes=lanes)
        result: dict[str, Any] = {}
        try:
            main_end = _main_phase_count(recipe, phases)
            result["main"] = _run_track(run, "main", recipe.phases[:main_end])
            if main_end == len(recipe.phases) and not result["main"].get("stopped"):
                branch = ckpt.latest_checkpoint(out / "checkpoints" / "main")
                for name, track in tracks.items():  # the decay variants, each from the main track's end
                    if name != "main":
                        result[name] = _run_track(run, name, track, init_from=branch)
                        if result[name].get("stopped"):
                            break
        finally:
            run.metrics.close()
        if d.is_main and plots and not any(r.get("stopped") for r in result.values()):
            make_plots(out)
    cleanup(d)
    return {"tracks": result}


def _check_inputs(recipe: Recipe, config: EncoderConfig, shards: Path) -> tuple[ShardIndex, dict[str, int]]:
    """The recipe against the model and the shards, before anything is written: the shards' index
    and their training tokens per language."""
    validate_recipe(recipe, max_position_embeddings=config.max_position_embeddings)
    index = ShardIndex.load(shards)
    if index.vocab_size > config.vocab_size:
        raise RecipeError(f"the shards in {shards} use a {index.vocab_size}-token vocabulary but the model has "
                          f"vocab_size {config.vocab_size}; build the model with vocab_size={index.vocab_size}")
    counts = {lang: index.tokens(lang) for lang in index.languages}
    for p in recipe.all_phases():  # every language set resolves
        langs = resolve_languages(p.languages, counts, p.shares)
        extra = sorted(set(p.language_weights) - set(langs))
        if extra:
            raise RecipeError(f"phase {p.name!r}: language_weights name {extra}, which are not among its "
                              f"{len(langs)} languages on these shards; fix the weights or the language set")
    return index, counts


def _main_phase_count(recipe: Recipe, only: Sequence[str] | None) -> int:
    """Main phases to run: all, unless `--phase` names only main phases (then up to the last named)."""
    if not only:
        return len(recipe.phases)
    names = [p.name for p in recipe.phases]
    if any(o in recipe.variants or o not in names for o in only):
        return len(recipe.phases)
    return max(names.index(o) for o in only) + 1


# ------------------------------------------------------------------ one track: its state, then the loop

@dataclass(frozen=True)
class RunSpec:
    """What one launch of `train()` fixed, the same for all its tracks; the loop reads it, never changes it."""

    recipe: Recipe
    config: EncoderConfig  # the model as built; each phase's RoPE θ is applied to the model, not written here
    shards: Path  # the shard directory
    out: Path  # the run directory
    counts: dict[str, int]  # training tokens per language in the shards
    d: Dist
    metrics: Metrics
    tokenizer: Any  # the shards' tokenizer, written into each phase-end export (None: none found)
    seed: int
    micro_tokens: int  # tokens per micro-batch per rank
    lr_scale: float  # factor on the recipe's learning rate (run.json)
    parallel: str = "auto"
    compile: bool = False
    keep_last: int = 3
    stop_at_step: int | None = None
    eval: bool = True
    progress: bool = True
    threads: int | None = None
    lanes: int | None = None  # packing lanes of a new stream; None: one per rank


class Trainer:
    """One track's training state: model, optimizer, data stream and position (`state`, which a
    checkpoint stores), built fresh from the run's seed and then moved to where the track stands
    (`resume`). Its methods are the loop's steps; `_run_track` calls them in order."""

    def __init__(self, run: RunSpec, track: str, phases: Sequence[Phase], init_from: Path | None = None):
        self.run, self.track, self.phases, self.init_from = run, track, tuple(phases), init_from
        torch.manual_seed(run.seed)
        random.seed(run.seed)
        np.random.seed(run.seed)
        self.model = parallelize(build_model(run.config, head="mlm"), run.d, mode=run.parallel, compile=run.compile)
        self.inner = unwrap(self.model)
        self.optimizer = build_optimizer(self.model, lr=phases[0].lr_peak, weight_decay=phases[0].weight_decay,
                                         betas=run.recipe.betas, eps=run.recipe.eps,
                                         max_lr=max(p.lr_peak for p in phases))
        self.stream = _Stream(run.shards, run.counts, run.seed, run.d, run.micro_tokens, run.lanes)
        self.state = {"track": track, "phase": 0, "phase_tokens": 0, "tokens": 0, "step": 0}
        self.ck_root = run.out / "checkpoints" / track
        self.entered: Phase | None = None  # the phase whose θ and dropout the model has
        self.amp = torch.bfloat16 if run.d.device.type == "cuda" else None
        self.peak = peak_flops(run.d.device)

    @property
    def phase(self) -> Phase:
        return self.phases[self.state["phase"]]

    @property
    def done(self) -> bool:
        return self.state["phase"] >= len(self.phases)

    def resume(self) -> None:
        """Move to the newest loadable checkpoint of the track, else its branch point, else the start;
        re-make phase-end exports a kill cut off; open the data stream there."""
        run, st = self.run, self.state
        start, loaded = _resume_point(self.ck_root, self.init_from, self.model, self.optimizer, run.d)
        if start is None:
            self.stream.open(self.phases[0])
            run.metrics.truncate(self.track, 0)  # a killed run before its first checkpoint: its records go
            return
        st.update({k: loaded["train_state"][k] for k in ("phase", "phase_tokens", "tokens", "step")})
        if start == self.init_from:  # a branch: the main track ended here, the variant's phase starts next
            st.update(phase=len(run.recipe.phases), phase_tokens=0)
        if run.d.is_main:  # phase-end exports a kill cut off (the checkpoint was saved, the export not)
            first = 0 if self.init_from is None else len(run.recipe.phases)  # the phases this track exports
            remake_exports(self.ck_root, self.phases[first:st["phase"]], first, run.config, run.out, run.tokenizer,
                           card=lambda i, tokens: phase_card(run.recipe, self.phases[:i + 1], run.counts, tokens))
        if self.done:
            return
        self.stream.open(self.phase)
        self.stream.loader.load_state_dict(loaded["loader_state"])
        # saved at a phase end, the loader still holds the previous phase: switch at the loop top
        # exactly as the uninterrupted run did; saved inside a phase, it is already configured
        self.stream.phase = self.phase if st["phase_tokens"] > 0 else None
        run.metrics.truncate(self.track, st["step"])

    def enter(self, p: Phase) -> None:
        """Phase start (or a resume inside it): RoPE θ, attention-output dropout; the stream's
        languages, τ, mask rate and sequence length unless it already has them."""
        self.inner.set_rope_theta(p.global_rope_theta, p.local_rope_theta)
        self.inner.set_attention_output_dropout(self.inner.config.attention_dropout if p.attention_output_dropout
                                                is None else p.attention_output_dropout)
        if self.stream.phase is not p:
            self.stream.switch(p)
        self.entered = p

    def step(self, p: Phase, rows: int, lr: float) -> tuple[StepStats, list[dict[str, Any]]]:
        """One optimizer step of `rows` global rows at learning rate `lr`; the next step's batches are
        started in the background unless this step ends the phase or the run."""
        run, t = self.run, self.state["phase_tokens"]
        set_lr_and_weight_decay(self.optimizer, lr, p.weight_decay)
        micro = self.stream.batches(p, rows)
        t_next = t + rows * p.seq_len
        if t_next < p.tokens and (run.stop_at_step is None or self.state["step"] + 1 < run.stop_at_step):
            self.stream.prefetch(p, _step_rows(p, t_next, self.stream.loader.row_multiple))  # overlaps the step
        # mlm_loss_fn: the module's name, looked up at each call (a test swaps it to poison one step)
        stats = train_step(self.model, self.optimizer, micro, mlm_loss_fn, grad_clip=run.recipe.grad_clip,
                           autocast_dtype=self.amp)
        return stats, micro

    def log(self, p: Phase, t: int, rows: int, lr: float, stats: StepStats, micro: list[dict[str, Any]],
            dt: float, bar: Any) -> None:
        """The step's metrics record (t: tokens into the phase at the step's start) and the progress bar."""
        st, step_tokens = self.state, rows * p.seq_len
        tps = step_tokens / dt  # includes waiting for the batches
        # this rank's useful FLOPs (its own documents and masked tokens) over its own peak
        masked_here = sum(int(b["num_masked"]) for b in micro)
        mfu = (step_flops(self.inner.config, micro, masked_here) / dt / self.peak) if self.peak else None
        self.run.metrics.log({"type": "train", "track": self.track, "phase": p.name, "step": st["step"],
                              "tokens": st["tokens"], "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                              "mask_rate": mask_rate_at(p, t), "temperature": temperature_at(p, t),
                              "seq_len": p.seq_len, "batch_rows": rows, "masked_tokens": stats.num_items,
                              "tokens_per_s": tps, "mfu": mfu, "theta_global": p.global_rope_theta})
        if bar is not None:
            bar.update(step_tokens)
            if st["step"] % self.run.recipe.log_every_steps == 0:
                bar.set_postfix(phase=p.name, loss=f"{stats.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                                mfu=f"{mfu:.1%}" if mfu is not None else "-")

    def evaluate(self, p: Phase) -> None:
        """Per-language held-out MLM loss/accuracy (mmbert.eval.mlm) into metrics.jsonl. Runs under
        fork_rng so evaluating (or not) never changes the training stream."""
        run, st = self.run, self.state
        index = ShardIndex.load(run.shards)
        langs = [lang for lang in index.languages if index.has(lang, "heldout")]
        if run.recipe.eval_max_languages and len(langs) > run.recipe.eval_max_languages:
            langs = _eval_subset(langs, run.counts, run.recipe.eval_max_languages)
        if not langs:
            return
        devices = [run.d.device.index] if run.d.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            res = evaluate_mlm(self.inner, run.shards, langs, max_tokens_per_lang=run.recipe.eval_tokens_per_lang,
                               seed=0, seq_len=min(p.seq_len, 512), tiers=run.recipe.language_tiers())
        base = {"type": "eval", "track": self.track, "phase": p.name, "step": st["step"], "tokens": st["tokens"]}
        for lang, r in res["languages"].items():
            run.metrics.log({**base, "lang": lang, "tier": r["tier"], "loss": r["loss"], "accuracy": r["accuracy"]})
        for tier, r in res["tiers"].items():
            run.metrics.log({**base, "lang": f"tier:{tier}", "tier": tier, "loss": r["loss"],
                             "accuracy": r["accuracy"]})
        run.metrics.log({**base, "lang": "macro", "tier": "macro", "loss": res["macro"]["loss"],
                         "accuracy": res["macro"]["accuracy"]})

    def save(self, p: Phase, phase_end: bool) -> None:
        """A checkpoint of the state after this step (kept for good at a phase end)."""
        run, st = self.run, self.state
        run_config = {"recipe": run.recipe.to_dict(), "model": run.config.to_dict(), "seed": run.seed,
                      "track": self.track, "phases": [q.name for q in self.phases], "world_size": run.d.world_size,
                      "micro_tokens": run.micro_tokens}
        try:
            ckpt.save_checkpoint(self.ck_root, st["step"], model=self.model, optimizer=self.optimizer,
                                 train_state={**st, "lr_scale": run.lr_scale},
                                 loader_state=gather_state(self.stream.state_after),
                                 run_config=run_config, keep_last=run.keep_last, keep=phase_end, write=run.d.is_main)
        except ckpt.NonFiniteWeights as e:
            raise self.diverged(p, str(e)) from None

    def export(self, p: Phase) -> None:
        """export/<phase>/ at the end of phase p (every rank calls it; rank 0 writes)."""
        run = self.run
        export_phase(self.model, self.inner, run.out / "export" / p.name, run.d, run.tokenizer,
                     card=phase_card(run.recipe, self.phases[:self.state["phase"]], run.counts, self.state["tokens"]))

    def diverged(self, p: Phase, what: str) -> TrainingDiverged:
        """The error that stops a non-finite run, naming the last good checkpoint and how to go on."""
        good = ckpt.last_good_checkpoint(self.ck_root) or self.init_from
        new = self.run.lr_scale * 0.5
        cont = (f"Last good checkpoint: {good}. To continue from it with half the learning rate, run the same "
                f"command with --resume --lr-scale {new:g}" if good else
                f"No good checkpoint yet: start again with --resume --lr-scale {new:g}")
        return TrainingDiverged(f"{self.track}/{p.name}: {what}; stopped without saving. {cont} (it multiplies the "
                                f"recipe's learning rate from there on and is recorded in run.json)")

    def result(self, loss: float | None, **flags: bool) -> dict[str, Any]:
        return {"step": self.state["step"], "tokens": self.state["tokens"], "loss": loss, **flags}


def _run_track(run: RunSpec, track: str, phases: Sequence[Phase], init_from: Path | None = None) -> dict[str, Any]:
    """Train one track of phases from where it stands (its last checkpoint, else its branch point
    `init_from`, else the start) to its end; returns {"step", "tokens", "loss"} (+ "stopped" after
    `stop_at_step`, "skipped" when it was already complete)."""
    tr = Trainer(run, track, phases, init_from)
    tr.resume()
    if tr.done:
        return tr.result(None, skipped=True)
    # CPU threads: the count chosen at start (idle threads sleep, busy cores counted; mmbert.threads).
    # No probing of other counts mid-run: a changed count may round CPU reductions differently, and
    # exact resume needs the same arithmetic; on 2 shared cores the start count kept 97% of its
    # speed next to a busy process against 81% with probing (benchmarks/results/shared_cores_*)
    if run.d.device.type == "cpu":
        ThreadPolicy(run.threads, probe=False)
    st = tr.state
    bar = _progress(run.progress and run.d.is_main, phases, st, track)
    loss = None
    try:
        while not tr.done:
            p = tr.phase
            if tr.entered is not p:
                tr.enter(p)
            # -------- one optimizer step: the schedules at this position, batches, train_step
            t = st["phase_tokens"]
            rows = _step_rows(p, t, tr.stream.loader.row_multiple)
            lr = lr_at(p, t) * run.lr_scale  # exact when 1.0 (x * 1.0 == x)
            t0 = time.perf_counter()
            stats, micro = tr.step(p, rows, lr)
            dt = time.perf_counter() - t0
            step_tokens = rows * p.seq_len
            st["step"] += 1
            st["phase_tokens"] += step_tokens
            st["tokens"] += step_tokens
            if stats.skipped and stats.num_items > 0:
                raise tr.diverged(p, f"loss {stats.loss} / grad norm {stats.grad_norm} is not finite "
                                     f"at step {st['step']}")
            loss = stats.loss
            tr.log(p, t, rows, lr, stats, micro, dt, bar)
            phase_end = st["phase_tokens"] >= p.tokens
            if phase_end:
                st["phase"] += 1
                st["phase_tokens"] = 0
            # -------- evaluate
            if run.eval and (phase_end or _crossed(st["tokens"], step_tokens, run.recipe.eval_every_tokens)):
                tr.evaluate(p)
            # -------- a simulated kill: stop without saving
            if run.stop_at_step is not None and st["step"] >= run.stop_at_step:
                _close(bar)
                return tr.result(loss, stopped=True)
            # -------- checkpoint; at a phase end also the export (a kill between the two: resume re-makes it)
            if phase_end or _crossed(st["tokens"], step_tokens, run.recipe.checkpoint_every_tokens):
                tr.save(p, phase_end)
                if phase_end:
                    tr.export(p)
                barrier(run.d)
        _close(bar)
        return tr.result(loss)
    finally:
        tr.stream.close()  # the background loader thread


def _step_rows(p: Phase, t: int, w: int) -> int:
    """Global rows of the step starting at `t` tokens into phase p: the recipe's batch (warm-up
    included) in multiples of `w` (the loader's row_multiple: whole rows per rank and per lane),
    not overshooting the phase's budget."""
    rows = batch_rows_at(p, t, granularity=w)
    left_rows = math.ceil((p.tokens - t) / p.seq_len)
    return min(rows, math.ceil(left_rows / w) * w)


def _crossed(tokens: int, step_tokens: int, every: int) -> bool:
    """Whether the step that brought the count to `tokens` crossed a multiple of `every`."""
    return tokens // every > (tokens - step_tokens) // every


def _progress(enabled: bool, phases: Sequence[Phase], state: dict[str, Any], track: str):
    """A tqdm bar over the track's tokens, starting at those already trained (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm  # only for an interactive run

    total = sum(p.tokens for p in phases)
    done = sum(p.tokens for p in phases[:state["phase"]]) + state["phase_tokens"]
    # smoothing=0: the ETA uses the average rate since this launch, not the last few steps (which swing
    # with batch-size warm-up, periodic evaluation and checkpoints, giving estimates off by hours)
    return tqdm(total=total, initial=done, unit="tok", unit_scale=True, desc=f"pretrain[{track}]",
                dynamic_ncols=True, smoothing=0)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()


def _eval_subset(langs: list[str], counts: dict[str, int], k: int) -> list[str]:
    """k languages spread over the size ranking (largest, smallest and evenly between)."""
    ranked = sorted(langs, key=lambda x: (-counts.get(x, 0), x))
    idx = sorted({round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return sorted(ranked[i] for i in idx)


def _resume_point(ck_root: Path, init_from: Path | None, model, optimizer, d: Dist) -> tuple[Path | None, Any]:
    """Load the newest loadable checkpoint of the track (falling back past damaged ones, which are
    renamed `damaged-step_…` and reported), else the branch point `init_from`, else nothing."""
    for path in reversed(ckpt.list_checkpoints(ck_root)):
        try:
            return path, ckpt.load_checkpoint(path, model=model, optimizer=optimizer)
        except ckpt.CheckpointDamaged as e:
            if d.is_main:
                aside = path.with_name(f"damaged-{path.name}")
                os.rename(path, aside)
                _warn(f"{e}; set aside as {aside.name}, resuming from an older checkpoint")
            barrier(d)
    if init_from is not None:
        return init_from, ckpt.load_checkpoint(init_from, model=model, optimizer=optimizer)
    return None, None


# ------------------------------------------------------------------ the loader, mapped from a Phase

@dataclass
class _Stream:
    """The data loader (mmbert.data.loader) driven by Phase records."""

    shards: Path
    counts: dict[str, int]
    seed: int
    d: Dist
    micro_tokens: int
    lanes: int | None = None  # packing lanes of a new stream; None: one per rank
    loader: Any = None
    phase: Phase | None = None  # the phase the loader is known to be configured for

    def micro_rows(self, p: Phase) -> int:
        return max(1, self.micro_tokens // p.seq_len)

    def params(self, p: Phase) -> StreamPhase:
        return StreamPhase(languages=resolve_languages(p.languages, self.counts, p.shares),
                           temperature=temperature_at(p, 0), mask_rate=mask_rate_at(p, 0), seq_len=p.seq_len,
                           language_weights=p.language_weights, token_budget=p.tokens, shares=p.shares,
                           epoch_cap=p.epoch_cap)

    def open(self, p: Phase) -> None:
        # one packing lane per rank: each rank packs only its own rows (a resumed state brings its lanes)
        spec = LoaderSpec(seed=self.seed, rows_per_batch=self.micro_rows(p) * self.d.world_size,
                          lanes=self.lanes or self.d.world_size)
        self.loader = MLMLoader(self.shards, self.params(p), spec, rank=self.d.rank, world_size=self.d.world_size)
        self.phase = p

    def switch(self, p: Phase) -> None:
        """At a phase boundary: new language set, τ, mask rate, sequence length."""
        self.loader.set_phase(self.params(p))
        self.phase = p

    # The loader runs beside the step: while step k computes, a background thread makes step k+1's
    # micro-batches (numpy, which releases the GIL for its array work). The calls reaching the
    # loader, and their order, are exactly those of a synchronous loop, so batches, losses and
    # resume are unchanged; the checkpoint stores the loader state taken right after the batches
    # of the step it belongs to (`state_after`), not the prefetched position.
    pending: Any = None  # ((phase name, rows), Future of (micro-batches, loader state after them))
    state_after: dict[str, Any] | None = None
    _pool: Any = None

    def batches(self, p: Phase, rows: int) -> list[dict[str, Any]]:
        """This step's micro-batches: the prefetched ones when they are for this (phase, rows),
        else made now (first step, or after a phase switch)."""
        if self.pending is not None and self.pending[0] == (p.name, rows):
            micro, self.state_after = self.pending[1].result()
            self.pending = None
            return micro
        self.drop_pending()
        micro = self.step_batches(p, rows)
        self.state_after = self.loader.state_dict()
        return micro

    def prefetch(self, p: Phase, rows: int) -> None:
        """Start making the next step's micro-batches in the background."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmbert-loader")
        self.pending = ((p.name, rows), self._pool.submit(lambda: (self.step_batches(p, rows),
                                                                   self.loader.state_dict())))

    def drop_pending(self) -> None:
        """Discard a prefetch that will not be used and rewind the loader to before it."""
        if self.pending is not None:
            self.pending[1].exception()  # wait for it (an error in it does not matter: discarded)
            self.pending = None
            if self.state_after is not None:
                self.loader.load_state_dict(self.state_after)

    def close(self) -> None:
        self.drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def step_batches(self, p: Phase, rows: int) -> list[dict[str, Any]]:
        """The micro-batches of one step of `rows` GLOBAL rows (a multiple of the loader's
        row_multiple = lcm(world size, lanes)): chunks of at most micro_rows rows per rank (at least
        one row_multiple), in stream order; each rank gets its contiguous share of every chunk, so
        the union over ranks equals the 1-process step with the same lanes."""
        g = self.loader.row_multiple
        most = max(g, self.micro_rows(p) * self.d.world_size // g * g)
        sizes = [most] * (rows // most) + ([rows % most] if rows % most else [])
        return [self.loader.next_batch(k) for k in sizes]
