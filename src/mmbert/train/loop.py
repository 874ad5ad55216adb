"""The pretraining loop: one readable function per track of phases.

    mmbert pretrain --recipe cpu-demo --data out/shards --out out/run            # CPU, ≈15 min
    torchrun --nproc_per_node 8 -m mmbert.cli pretrain --recipe mmbert --preset mmbert-base \
        --data /data/shards --out /runs/mmbert [--parallel fsdp] [--compile] [--resume]

`train()` runs the recipe's main phases (pretrain → mid) as the "main" track, then every decay
variant as its own track that starts from the main track's final checkpoint. Each step: schedule
values from the phase and the tokens seen in it (schedules.py) → micro-batches from the loader
(made by a background thread while the previous step computed; same calls, same order) →
`train_step` (accumulation, loss / global masked-token count, clip, StableAdamW). At marked points:
metrics.jsonl, per-language held-out MLM eval, checkpoints (atomic, keep-last-K, phase ends kept),
a Hugging Face export at each phase end. A non-finite loss stops the run with the last good
checkpoint named. Resume is exact: the loader, optimizer, RNG and schedule position come back from
the checkpoint, and on CPU the losses after a resume equal the uninterrupted run's bit for bit.

Run directory:
  run.json                      what this run is (recipe, model config, seed, data) — the guard
  metrics.jsonl                 one JSON record per step ("train") and per eval ("eval")
  checkpoints/<track>/step_*/   see checkpoint.py
  export/<phase>/               HF model directory at each phase end (re-made on resume if a kill cut it off)
  plots/*.png, summary.md       plots.py
  ../.<run>.lock                while a process writes the run (utils.RunLock): a second one is refused
Every file and directory is published by one rename after an fsync (utils), so a kill anywhere
resumes to the uninterrupted run's end state byte for byte (tests/train/test_crash.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mmbert.model.config import EncoderConfig
from mmbert.threads import ThreadPolicy
from mmbert.train import checkpoint as ckpt
from mmbert.train.optim import build_optimizer, set_lr_and_weight_decay
from mmbert.train.parallel import Dist, barrier, cleanup, init_distributed, parallelize
from mmbert.train.recipe import Phase, Recipe, RecipeError, resolve_languages, select_tracks, validate_recipe
from mmbert.train.schedules import batch_rows_at, lr_at, mask_rate_at, temperature_at
from mmbert.train.step import mlm_loss_fn, train_step
from mmbert.utils import RunLock, atomic_write, publish_dir, sweep_stale, unwrap


class RunDirError(FileExistsError):
    """The output directory holds something else; nothing was overwritten."""


class TrainingDiverged(ValueError):
    """The loss, gradient or weights became non-finite (the message names the last good checkpoint
    and how to continue from it with a lower learning rate)."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ run directory and logging

def prepare_run_dir(out: Path, identity: dict[str, Any], resume: bool) -> None:
    """Guard: an output dir holding another run (or anything else) → one clear error. Temp files of
    dead processes (e.g. a kill during the very first run.json write) are removed first."""
    run_json = out / "run.json"
    sweep_stale(out)
    if run_json.is_file():
        try:
            old = json.loads(run_json.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{run_json} is corrupt ({e}); choose a new --out directory") from e
        if old.get("identity") != identity:
            diff = sorted(k for k in set(old.get("identity", {})) | set(identity)
                          if old.get("identity", {}).get(k) != identity.get(k))
            raise RunDirError(f"--out {out} holds another run (differs in: {', '.join(diff)}); choose a new "
                              f"--out directory, or pass the same settings to continue it with --resume")
        if not resume:
            raise RunDirError(f"--out {out} already holds this run; pass --resume to continue it, or choose "
                              f"a new --out directory")
        return
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"--out {out} is not empty and holds no mmbert run; choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(run_json, json.dumps({"identity": identity}, indent=2, sort_keys=True))


class Metrics:
    """metrics.jsonl (rank 0), plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled, self.tb = out / "metrics.jsonl", enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def truncate(self, track: str, after_step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint (all of the track's when it has
        none), so a resume logs them once; a torn last line (a kill or a full disk mid-write) is
        dropped with a warning, a damaged line elsewhere is an error naming it."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        keep = []
        for i, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
                rec["step"], rec["track"]  # noqa: B018  (a record we can place)
            except (ValueError, KeyError, TypeError) as e:
                if i >= len(lines) - 1:  # the last line
                    _warn(f"{self.path}:{i}: dropped a torn last line ({len(ln)} bytes) left by an interrupted write")
                    continue
                raise RunDirError(f"{self.path}:{i} is not a metrics record ({e}); delete that line and "
                                  f"resume again") from e
            if not (rec["track"] == track and rec["step"] > after_step):
                keep.append(ln)
        atomic_write(self.path, "".join(ln + "\n" for ln in keep))

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            tag = f"{rec['track']}/{rec['type']}"
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self.tb.add_scalar(f"{tag}/{k}" + (f"/{rec['lang']}" if "lang" in rec else ""), v, rec["tokens"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------ throughput

def flops_per_token(cfg: EncoderConfig, seq_len: int, mask_rate: float) -> float:
    """Training FLOPs per token: 6·(non-embedding params) + 6·(decoder for the masked fraction,
    sparse prediction) + attention 12·L·h·context (context = window on local layers)."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    dense = cfg.num_parameters(include_embeddings=False, head="mlm") - (cfg.vocab_size if cfg.decoder_bias else 0)
    decoder = h * cfg.vocab_size * mask_rate
    ctx = sum(seq_len if cfg.is_global_layer(i) else min(seq_len, cfg.local_attention) for i in range(L))
    return 6.0 * (dense + decoder) + 12.0 * h * ctx


def step_flops(cfg: EncoderConfig, micro_batches: Sequence[dict[str, Any]], masked_tokens: int) -> float:
    """Training FLOPs this rank actually ran useful work for in one step, from the packed documents'
    real lengths (padding segments excluded): 6·(non-embedding params) per real token, 6·h·V per
    masked token (sparse decoder), and attention 12·h per attended (query, key) pair per layer —
    n² pairs for a document of n tokens on a global layer, ≈ n·(2w+1) on a local one (half window
    w). Counting global attention over the full seq_len instead overstates it whenever documents are
    shorter than the row (at seq 8192, about a third of those FLOPs never run)."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    dense = cfg.num_parameters(include_embeddings=False, head="mlm") - (cfg.vocab_size if cfg.decoder_bias else 0)
    w = cfg.local_attention // 2
    n_global = sum(cfg.is_global_layer(i) for i in range(L))
    tokens = pairs = 0
    for b in micro_batches:
        n = np.diff(b["cu_seqlens"].numpy()).astype(np.float64)
        if "doc_lang" in b:
            n = n[b["doc_lang"].numpy() >= 0]  # drop the padding segments
        tokens += n.sum()
        local = np.where(n <= w, n * n, n * (2 * w + 1) - w * (w + 1))
        pairs += n_global * (n * n).sum() + (L - n_global) * local.sum()
    return 6.0 * dense * tokens + 6.0 * h * cfg.vocab_size * masked_tokens + 12.0 * h * pairs


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs; $MMBERT_PEAK_FLOPS overrides (e.g. for a CPU)."""
    if os.environ.get("MMBERT_PEAK_FLOPS"):
        return float(os.environ["MMBERT_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12), ("A10", 125e12),
                     ("4090", 165e12), ("3090", 71e12)):
        if key in name:
            return val
    return None


# ------------------------------------------------------------------ the loader, mapped from a Phase

@dataclass
class _Stream:
    """The data loader (mmbert.data.loader) driven by Phase records."""

    data: Path
    counts: dict[str, int]
    seed: int
    d: Dist
    micro_tokens: int
    loader: Any = None
    phase: Phase | None = None  # the phase the loader is known to be configured for

    def micro_rows(self, p: Phase) -> int:
        return max(1, self.micro_tokens // p.seq_len)

    def params(self, p: Phase) -> dict[str, Any]:
        return dict(languages=resolve_languages(p.languages, self.counts, p.shares), tau=temperature_at(p, 0),
                    mask_rate=mask_rate_at(p, 0), seq_len=p.seq_len,
                    language_weights=dict(p.language_weights) or None, token_budget=p.tokens,
                    shares=dict(p.shares) or None, epoch_cap=p.epoch_cap)

    def open(self, p: Phase) -> None:
        from mmbert.data.loader import MLMLoader

        self.loader = MLMLoader(self.data, seed=self.seed, rank=self.d.rank, world_size=self.d.world_size,
                                rows_per_batch=self.micro_rows(p) * self.d.world_size, **self.params(p))
        self.phase = p

    def switch(self, p: Phase) -> None:
        """At a phase boundary: new language set, τ, mask rate, sequence length."""
        self.loader.set_phase(**self.params(p))
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
        from concurrent.futures import ThreadPoolExecutor

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
        """The micro-batches of one step of `rows` GLOBAL rows (a multiple of world_size): chunks of
        at most micro_rows rows per rank, in stream order; each rank gets its contiguous share of
        every chunk, so the union over ranks equals the 1-process step."""
        w, m = self.d.world_size, self.micro_rows(p)
        per_rank = rows // w
        sizes = [m] * (per_rank // m) + ([per_rank % m] if per_rank % m else [])
        return [self.loader.next_batch(k * w) for k in sizes]


# ------------------------------------------------------------------ train

def train(recipe: Recipe, config: EncoderConfig, data: str | os.PathLike, out: str | os.PathLike, *,
          seed: int = 0, resume: bool = False, phases: Sequence[str] | None = None,
          micro_batch_tokens: int | None = None, parallel: str = "auto", compile: bool = False,
          device: str | None = None, keep_last: int = 3, stop_at_step: int | None = None,
          eval: bool = True, progress: bool = True, plots: bool = True, threads: int | None = None,
          lr_scale: float | None = None) -> dict[str, Any]:
    """Run the recipe's tracks into `out`; returns {"tracks": {name: {"step", "tokens", "loss"}}}.

    micro_batch_tokens: tokens per micro-batch per rank (memory knob; the global batch comes from the
    recipe). stop_at_step: end a track after this global step without saving — a simulated kill.
    lr_scale: multiply the recipe's learning rate by this from now on (e.g. to continue past a
    divergence with --resume); recorded in run.json and kept by later resumes until given again.
    Only one process writes a run directory at a time (utils.RunLock, held for the whole run).
    """
    from mmbert.data.shards import ShardIndex

    data, out = Path(data), Path(out)
    d = init_distributed(device)
    validate_recipe(recipe, max_position_embeddings=config.max_position_embeddings)
    index = ShardIndex.load(data)
    if index.vocab_size > config.vocab_size:
        raise RecipeError(f"the shards in {data} use a {index.vocab_size}-token vocabulary but the model has "
                          f"vocab_size {config.vocab_size}; build the model with vocab_size={index.vocab_size}")
    counts = {lang: index.tokens(lang) for lang in index.languages}
    for p in recipe.all_phases():  # every language set resolves before anything is written
        langs = resolve_languages(p.languages, counts, p.shares)
        extra = sorted(set(p.language_weights) - set(langs))
        if extra:
            raise RecipeError(f"phase {p.name!r}: language_weights name {extra}, which are not among its "
                              f"{len(langs)} languages on these shards; fix the weights or the language set")
    tracks = select_tracks(recipe, phases)
    if lr_scale is not None and not (math.isfinite(lr_scale) and lr_scale > 0):
        raise RecipeError(f"--lr-scale must be a positive number (e.g. 0.5 halves the learning rate), got {lr_scale}")
    tokenizer = _shards_tokenizer(index, data)
    identity = {"recipe": recipe.to_dict(), "model": config.to_dict(), "seed": seed, "data": str(data.resolve())}
    with contextlib.ExitStack() as held:
        if d.is_main:
            held.enter_context(RunLock(out))
            prepare_run_dir(out, identity, resume)
            info = json.loads((out / "run.json").read_text())
            launch = {"world_size": d.world_size, "device": str(d.device), "resume": resume,
                      "time": time.strftime("%Y-%m-%d %H:%M:%S")}
            if lr_scale is not None:  # an explicit override: kept for every later resume
                launch["lr_scale"] = info["lr_scale"] = lr_scale
            info.setdefault("launches", []).append(launch)
            atomic_write(out / "run.json", json.dumps(info, indent=2, sort_keys=True))
            _sweep_run_dir(out)
        barrier(d)
        scale = float(json.loads((out / "run.json").read_text()).get("lr_scale", 1.0))
        metrics = Metrics(out, enabled=d.is_main)
        micro_tokens = micro_batch_tokens or (16384 if d.device.type == "cuda" else 4096)
        result: dict[str, Any] = {"tracks": {}}
        try:
            main_end = _main_phase_count(recipe, phases)
            result["tracks"]["main"] = _run_track(
                "main", recipe.phases[:main_end], recipe, config, data, out, counts, seed, d, metrics,
                micro_tokens, parallel, compile, keep_last, stop_at_step, eval, progress, tokenizer, None, scale,
                threads)
            if main_end == len(recipe.phases) and not result["tracks"]["main"].get("stopped"):
                branch = ckpt.latest_checkpoint(out / "checkpoints" / "main")
                for name, track in tracks.items():
                    if name == "main":
                        continue
                    result["tracks"][name] = _run_track(
                        name, track, recipe, config, data, out, counts, seed, d, metrics, micro_tokens, parallel,
                        compile, keep_last, stop_at_step, eval, progress, tokenizer, branch, scale, threads)
                    if result["tracks"][name].get("stopped"):
                        break
        finally:
            metrics.close()
        stopped = any(r.get("stopped") for r in result["tracks"].values())
        if d.is_main and plots and not stopped:
            from mmbert.train.plots import make_plots

            make_plots(out)
    cleanup(d)
    return result


def _sweep_run_dir(out: Path) -> None:
    """Remove what dead writers left in the run directory (temp files, temp exports, checkpoints
    half-way through a save or a delete); a live process's are never touched (the lock makes that
    this process anyway)."""
    for d in (out, out / "export", out / "plots", *sorted((out / "checkpoints").glob("*"))):
        if d.is_dir():
            sweep_stale(d)


def _main_phase_count(recipe: Recipe, only: Sequence[str] | None) -> int:
    """Main phases to run: all, unless `--phase` names only main phases (then up to the last named)."""
    if not only:
        return len(recipe.phases)
    names = [p.name for p in recipe.phases]
    if any(o in recipe.variants or o not in names for o in only):
        return len(recipe.phases)
    return max(names.index(o) for o in only) + 1


def _run_track(track: str, phases: Sequence[Phase], recipe: Recipe, config: EncoderConfig, data: Path, out: Path,
               counts: dict[str, int], seed: int, d: Dist, metrics: Metrics, micro_tokens: int, parallel: str,
               compile: bool, keep_last: int, stop_at_step: int | None, do_eval: bool, progress: bool,
               tokenizer: Any, init_from: Path | None, lr_scale: float = 1.0,
               threads: int | None = None) -> dict[str, Any]:
    from mmbert.model import build_model

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = build_model(config.replace(), head="mlm")  # a copy: set_rope_theta edits the model's config
    model = parallelize(model, d, mode=parallel, compile=compile)
    optimizer = build_optimizer(model, lr=phases[0].lr_peak, weight_decay=phases[0].weight_decay,
                                betas=recipe.betas, eps=recipe.eps, max_lr=max(p.lr_peak for p in phases))
    stream = _Stream(data, counts, seed, d, micro_tokens)
    state = {"track": track, "phase": 0, "phase_tokens": 0, "tokens": 0, "step": 0}
    ck_root = out / "checkpoints" / track
    run_config = {"recipe": recipe.to_dict(), "model": config.to_dict(), "seed": seed, "track": track,
                  "phases": [p.name for p in phases], "world_size": d.world_size, "micro_tokens": micro_tokens}
    start, loaded = _resume_point(ck_root, init_from, model, optimizer, d)
    first_own = 0 if init_from is None else len(recipe.phases)  # the phases this track exports
    if start is None:
        stream.open(phases[0])
        metrics.truncate(track, 0)  # a killed run before its first checkpoint: its records go
    else:
        st = loaded["train_state"]
        state.update({k: st[k] for k in ("phase", "phase_tokens", "tokens", "step")})
        if start == init_from:  # a branch: the main track ended here, the variant's phase starts next
            state.update(phase=len(recipe.phases), phase_tokens=0)
        if d.is_main:  # phase-end exports a kill cut off (the checkpoint was saved, the export not)
            _remake_exports(ck_root, phases[first_own:state["phase"]], first_own, config, out, tokenizer,
                            card=lambda i, tokens: _phase_card(recipe, phases[:i + 1], counts, tokens))
        if state["phase"] >= len(phases):  # this track is complete
            return {"step": state["step"], "tokens": state["tokens"], "loss": None, "skipped": True}
        stream.open(phases[state["phase"]])
        stream.loader.load_state_dict(loaded["loader_state"])
        # saved at a phase end, the loader still holds the previous phase: switch at the loop top
        # exactly as the uninterrupted run did; saved inside a phase, it is already configured
        stream.phase = phases[state["phase"]] if state["phase_tokens"] > 0 else None
        metrics.truncate(track, state["step"])

    amp = torch.bfloat16 if d.device.type == "cuda" else None
    # CPU threads: the count chosen at start (idle threads sleep, busy cores counted; mmbert.threads).
    # No probing of other counts mid-run: a changed count may round CPU reductions differently, and
    # exact resume needs the same arithmetic; on 2 shared cores the start count kept 97% of its
    # speed next to a busy process against 81% with probing (benchmarks/results/shared_cores_*)
    if d.device.type == "cpu":
        ThreadPolicy(threads, probe=False)
    peak = peak_flops(d.device)
    inner = unwrap(model)
    total = sum(p.tokens for p in phases)
    done_before = sum(p.tokens for p in phases[:state["phase"]]) + state["phase_tokens"]
    bar = _progress(progress and d.is_main, total, done_before, track)
    last_loss = None
    applied: Phase | None = None
    try:
        while state["phase"] < len(phases):
            p = phases[state["phase"]]
            if applied is not p:  # phase start (or resume inside it): θ, languages, τ, mask, seq len
                inner.set_rope_theta(p.global_rope_theta, p.local_rope_theta)
                inner.set_attention_output_dropout(inner.config.attention_dropout if p.attention_output_dropout is None
                                                   else p.attention_output_dropout)
                if stream.phase is not p:
                    stream.switch(p)
                applied = p
            t = state["phase_tokens"]
            rows = _step_rows(p, t, d.world_size)
            lr = lr_at(p, t) * lr_scale  # exact when 1.0 (x * 1.0 == x)
            set_lr_and_weight_decay(optimizer, lr, p.weight_decay)
            t0 = time.perf_counter()  # tokens/s below includes waiting for the batches
            micro = stream.batches(p, rows)
            t_next = t + rows * p.seq_len
            if t_next < p.tokens and (stop_at_step is None or state["step"] + 1 < stop_at_step):
                stream.prefetch(p, _step_rows(p, t_next, d.world_size))  # overlaps the step below
            stats = train_step(model, optimizer, micro, mlm_loss_fn, grad_clip=recipe.grad_clip, autocast_dtype=amp)
            dt = time.perf_counter() - t0
            step_tokens = rows * p.seq_len
            state["step"] += 1
            state["phase_tokens"] += step_tokens
            state["tokens"] += step_tokens
            if stats.skipped and stats.num_items > 0:
                raise _diverged(f"{track}/{p.name}: loss {stats.loss} / grad norm {stats.grad_norm} is not finite "
                                f"at step {state['step']}", ck_root, init_from, lr_scale)
            tps = step_tokens / dt
            # this rank's useful FLOPs (its own documents and masked tokens) over its own peak
            masked_here = sum(int(b["num_masked"]) for b in micro)
            mfu = (step_flops(inner.config, micro, masked_here) / dt / peak) if peak else None
            last_loss = stats.loss
            metrics.log({"type": "train", "track": track, "phase": p.name, "step": state["step"],
                         "tokens": state["tokens"], "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
                         "mask_rate": mask_rate_at(p, t), "temperature": temperature_at(p, t), "seq_len": p.seq_len,
                         "batch_rows": rows, "masked_tokens": stats.num_items, "tokens_per_s": tps, "mfu": mfu,
                         "theta_global": p.global_rope_theta})
            if bar is not None:
                bar.update(step_tokens)
                if state["step"] % recipe.log_every_steps == 0:
                    bar.set_postfix(phase=p.name, loss=f"{stats.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{mfu:.1%}" if mfu is not None else "-")
            phase_end = state["phase_tokens"] >= p.tokens
            if phase_end:
                state["phase"] += 1
                state["phase_tokens"] = 0
            crossed = lambda every: state["tokens"] // every > (state["tokens"] - step_tokens) // every  # noqa: E731
            if do_eval and (phase_end or crossed(recipe.eval_every_tokens)):
                _evaluate(inner, data, recipe, phases, track, p, state, metrics, d, counts)
            if stop_at_step is not None and state["step"] >= stop_at_step:
                if bar is not None:
                    bar.close()
                return {"step": state["step"], "tokens": state["tokens"], "loss": last_loss, "stopped": True}
            if phase_end or crossed(recipe.checkpoint_every_tokens):
                try:
                    ckpt.save_checkpoint(ck_root, state["step"], model=model, optimizer=optimizer,
                                         train_state={**state, "lr_scale": lr_scale},
                                         loader_state=stream.state_after, run_config=run_config,
                                         keep_last=keep_last, keep=phase_end, write=d.is_main)
                except ckpt.NonFiniteWeights as e:
                    raise _diverged(f"{track}/{p.name}: {e}", ck_root, init_from, lr_scale) from None
                # kill here (phase end): the export is re-made from this checkpoint on resume
                if phase_end:
                    _export(model, inner, out / "export" / p.name, d, tokenizer,
                            card=_phase_card(recipe, phases[:state["phase"]], counts, state["tokens"]))
                barrier(d)
        if bar is not None:
            bar.close()
        return {"step": state["step"], "tokens": state["tokens"], "loss": last_loss}
    finally:
        stream.close()  # the background loader thread


def _step_rows(p: Phase, t: int, w: int) -> int:
    """Global rows of the step starting at `t` tokens into phase p: the recipe's batch (warm-up
    included) in whole rows per rank, not overshooting the phase's budget."""
    rows = batch_rows_at(p, t, granularity=w)
    left_rows = math.ceil((p.tokens - t) / p.seq_len)
    return min(rows, math.ceil(left_rows / w) * w)


def _progress(enabled: bool, total: int, initial: int, track: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # smoothing=0: the ETA uses the average rate since this launch, not the last few steps (which swing
    # with batch-size warm-up, periodic evaluation and checkpoints, giving estimates off by hours)
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=f"pretrain[{track}]",
                dynamic_ncols=True, smoothing=0)


def _evaluate(model, data: Path, recipe: Recipe, phases: Sequence[Phase], track: str, p: Phase,
              state: dict[str, Any], metrics: Metrics, d: Dist, counts: dict[str, int]) -> None:
    """Per-language held-out MLM loss/accuracy (mmbert.eval.mlm), when that module is available.
    Runs under fork_rng so evaluating (or not) never changes the training stream."""
    try:
        from mmbert.eval.mlm import evaluate_mlm
    except ImportError:
        return
    from mmbert.data.shards import ShardIndex

    index = ShardIndex.load(data)
    langs = [lang for lang in index.languages if index.has(lang, "heldout")]
    if recipe.eval_max_languages and len(langs) > recipe.eval_max_languages:
        langs = _eval_subset(langs, counts, recipe.eval_max_languages)
    if not langs:
        return
    devices = [d.device.index] if d.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        res = evaluate_mlm(model, data, langs, max_tokens_per_lang=recipe.eval_tokens_per_lang, seed=0,
                           seq_len=min(p.seq_len, 512), tiers=recipe.language_tiers())
    base = {"type": "eval", "track": track, "phase": p.name, "step": state["step"], "tokens": state["tokens"]}
    for lang, r in res["languages"].items():
        metrics.log({**base, "lang": lang, "tier": r["tier"], "loss": r["loss"], "accuracy": r["accuracy"]})
    for tier, r in res["tiers"].items():
        metrics.log({**base, "lang": f"tier:{tier}", "tier": tier, "loss": r["loss"], "accuracy": r["accuracy"]})
    metrics.log({**base, "lang": "macro", "tier": "macro", **{k: res["macro"][k] for k in ("loss", "accuracy")}})


def _eval_subset(langs: list[str], counts: dict[str, int], k: int) -> list[str]:
    """k languages spread over the size ranking (largest, smallest and evenly between)."""
    ranked = sorted(langs, key=lambda x: (-counts.get(x, 0), x))
    idx = sorted({round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return sorted(ranked[i] for i in idx)


def _diverged(what: str, ck_root: Path, init_from: Path | None, lr_scale: float) -> TrainingDiverged:
    good = ckpt.last_good_checkpoint(ck_root) or init_from
    new = lr_scale * 0.5
    cont = (f"Last good checkpoint: {good}. To continue from it with half the learning rate, run the same "
            f"command with --resume --lr-scale {new:g}" if good else
            f"No good checkpoint yet: start again with --resume --lr-scale {new:g}")
    return TrainingDiverged(f"{what}; stopped without saving. {cont} (it multiplies the recipe's learning "
                            f"rate from there on and is recorded in run.json)")


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


def _remake_exports(ck_root: Path, done: Sequence[Phase], first: int, config: EncoderConfig, out: Path,
                    tokenizer: Any, card: Callable[[int, int], Any] | None = None) -> None:
    """Write export/<phase>/ again from its phase-end checkpoint (phase-end checkpoints are kept)
    for each finished phase of this track whose export is missing: a kill between the phase-end
    checkpoint and its export otherwise loses the export for good."""
    from mmbert.model import build_model

    missing = [(first + i, p) for i, p in enumerate(done) if not (out / "export" / p.name / "config.json").is_file()]
    if not missing:
        return
    ends = {}
    for c in ckpt.list_checkpoints(ck_root):
        st = ckpt.read_state(c)
        if st.get("phase_tokens") == 0 and st.get("keep"):
            ends[st.get("phase")] = c
    for i, p in missing:
        c = ends.get(i + 1)
        if c is None:
            _warn(f"export/{p.name} is missing and its phase-end checkpoint is gone; not re-made")
            continue
        with torch.random.fork_rng(devices=[]):  # building a model draws from the RNG training resumes with
            model = build_model(config.replace(), head="mlm", init=False)
        ckpt.load_model_weights(c / "model.safetensors", model)
        model.set_rope_theta(p.global_rope_theta, p.local_rope_theta)
        _export(model, model, out / "export" / p.name, Dist(), tokenizer,
                card=card(i, int(ckpt.read_state(c).get("tokens", 0))) if card else None)
        _warn(f"re-made export/{p.name} from {c} (the run was stopped before writing it)")


def _shards_tokenizer(index, data: Path) -> Any:
    """The tokenizer the shards were made with, so phase-end exports are complete model
    directories: the copy in the shard directory (data/shards.py), else index.json's "path" when it
    still has the recorded sha256 (a tokenizer swapped since is an error naming both files); None
    when neither exists."""
    from mmbert.data.shards import shards_tokenizer

    return shards_tokenizer(index, data)


def _phase_card(recipe: Recipe, done: Sequence[Phase], counts: dict[str, int], tokens: int):
    """Model card of a phase-end export: the languages of every phase so far, tokens seen, the recipe."""
    from mmbert.export.card import CardInfo

    langs = list(dict.fromkeys(lang for p in done for lang in resolve_languages(p.languages, counts, p.shares)))
    return CardInfo(languages=langs, tokens_seen=tokens, recipe=f"{recipe.name} → {' → '.join(p.name for p in done)}",
                    description=f"Masked-LM pretraining with the `{recipe.name}` recipe, exported at the end of "
                                f"phase `{done[-1].name}`.")


def _export(model, inner, path: Path, d: Dist, tokenizer: Any = None, card: Any = None) -> None:
    """Phase-end Hugging Face directory (+ the shards' tokenizer), published whole (utils.publish_dir)."""
    from mmbert.model import build_model

    if any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        sd = ckpt.model_state(model)  # all ranks gather
        if not d.is_main:
            return
        inner_cpu = build_model(inner.config, head="mlm", init=False)
        inner_cpu.load_state_dict(sd, strict=False)
        inner = inner_cpu
    if not d.is_main:
        return
    if tokenizer is not None:
        inner.tokenizer = tokenizer
    from mmbert.export.hf import write_model_files

    with publish_dir(path) as tmp:
        write_model_files(inner, tmp, card=card)


# ------------------------------------------------------------------ the CLI's library call

def pretrain(recipe: str, data: str | os.PathLike, out: str | os.PathLike, *, preset: str | None = None,
             dry_run: bool = False, threads: int | None = None, **kwargs: Any) -> dict[str, Any] | str:
    """`mmbert pretrain`: resolve a named recipe (or recipe .json) and a model preset, size the
    vocabulary from the shards, then `train()`. dry_run returns the recipe's phase table and the
    language sets each phase resolves to on these shards, without training."""
    from mmbert.data.shards import ShardIndex
    from mmbert.train.recipe import get_recipe

    r = get_recipe(recipe)
    index = ShardIndex.load(data)
    config = EncoderConfig.from_preset(preset or r.preset, vocab_size=index.vocab_size)
    validate_recipe(r, max_position_embeddings=config.max_position_embeddings)
    if dry_run:
        counts = {lang: index.tokens(lang) for lang in index.languages}
        lines = [r.describe(), "", f"model: preset {preset or r.preset}, vocab {config.vocab_size}, "
                 f"{config.num_parameters():,} parameters", ""]
        for p in r.all_phases():
            langs = resolve_languages(p.languages, counts)
            lines.append(f"{p.name}: {len(langs)} languages: {', '.join(langs[:12])}{' …' if len(langs) > 12 else ''}")
        return "\n".join(lines)
    return train(r, config, data, out, threads=threads, **kwargs)
