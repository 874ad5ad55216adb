"""Merging checkpoints: TIES, linear and exponentially weighted averaging.

mmBERT's paper (arXiv:2509.06888) merges its three decay-phase variants with TIES, relative to
the mid-training checkpoint they branched from. Exponentially weighted averaging of one run's
checkpoints is the other common recipe (the paper does not say it was used for mmBERT-small).
This module does all three, on our checkpoints and on Hugging Face ModernBERT directories (the
same layout: config.json + model.safetensors).

    mmbert merge --method ties --base out/mid --models out/decay-a out/decay-b out/decay-c \
        --density 0.5 --out out/merged
    mmbert merge --method ema --alpha 0.5 --models out/run/step-1000 out/run/step-2000 --out out/ema
    mmbert merge --method linear --weights 2 1 --models out/a out/b --out out/avg

Notable:
- TIES (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models"):
  τ_i = θ_i − θ_base; keep each τ_i's top-`density` fraction of entries by magnitude (per tensor);
  scale by the per-model weight w_i; elect a sign per entry from sign(Σ_i w_i τ̂_i) (0 → +);
  average only the entries that agree with it, weighted: Σ_i w_i τ̂_i [agree] / Σ_i w_i [agree]
  (the "disjoint mean"; an entry nobody keeps stays at the base); θ = θ_base + λ × that.
  This is the same arithmetic as mergekit's `ties` method (normalize=True), which
  tests/test_merge.py checks when mergekit is installed.
- Linear: θ = Σ_i w_i θ_i / Σ_i w_i. EMA over a checkpoint series given oldest → newest:
  w ∝ α^k with k = 0 for the newest, so α → 0 returns the newest checkpoint and α = 1 the mean.
- Memory ≈ two models, not N: inputs are memory-mapped with `safetensors.safe_open` and read in
  row chunks of one tensor at a time; only the output model is held whole (safetensors writes a
  file at once). TIES finds each task vector's top-k cut-off by an exact two-pass radix select
  over the chunks, so even the embedding matrix is never materialised N times. Arithmetic is in
  float64; outputs take the first model's dtype. benchmarks/merge_memory.py measures the peak.
- Tied decoder: our directories do not store `decoder.weight`; a transformers directory may store
  it as well as, or (older exports) instead of, the token embeddings. It is read once, under the
  embedding name, and the output stores only the embeddings (loaders re-tie).
- Everything is validated (configs, tensor names, shapes, vocabularies, parameters) before any
  tensor is read, so a bad input fails fast with one `MergeError` naming the problem and the fix.
- Output: a model directory (config.json of the first model, model.safetensors, tokenizer files
  of the first model) plus merge.json recording the inputs and parameters; files are written
  as one directory (utils.publish_dir: built beside --out, swapped into place whole).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmbert.export.card import merged_card, write_card_files
from mmbert.export.hf import _not_model_file
from mmbert.model.config import EncoderConfig
from mmbert.utils import RunLock, atomic_write, publish_dir
from mmbert.version import __version__

MERGE_METHODS = ("ties", "linear", "ema")
# TIES density for merging a recipe's decay variants: `mmbert demo` and the study use this one value
DECAY_TIES_DENSITY = 0.7
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt")
EMBED = "model.embeddings.tok_embeddings.weight"
DECODER = "decoder.weight"
# Config fields that decide tensor shapes: every input, the base included, must agree on them.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "norm_bias", "attention_bias", "mlp_bias", "decoder_bias",
                "tie_word_embeddings")
# Fields that change what the weights compute: the merged models must agree on them too (the
# base only supplies task-vector origins, so e.g. a RoPE θ change after mid-training is allowed).
ARCH_FIELDS = SHAPE_FIELDS + ("hidden_activation", "classifier_activation", "layer_types", "local_attention",
                              "global_rope_theta", "local_rope_theta")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class MergeError(ValueError):
    """Inputs that cannot be merged; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- tensor arithmetic
# Every merge runs over row chunks of CHUNK_ELEMENTS entries, so the transient memory is a few
# chunks, not N copies of the largest tensor (mmBERT-base's 256k × 768 embedding is 60% of it).
CHUNK_ELEMENTS = 1 << 20
Rows = Callable[[int, int], torch.Tensor]  # rows [a, b) of one input tensor (flat if 0/1-D)


def _row_chunks(shape: Sequence[int]) -> list[tuple[int, int]]:
    rows = shape[0] if len(shape) else 1
    per = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [(a, min(rows, a + per)) for a in range(0, rows, per)]


def _in_memory(t: torch.Tensor) -> Rows:
    t = t.reshape(1) if t.dim() == 0 else t
    return lambda a, b: t[a:b]


def _kth_largest(chunks: Callable[[], Iterable[torch.Tensor]], k: int) -> tuple[float, int]:
    """(v, n_above): the k-th largest of non-negative float32 values given as chunks, and how many
    values are strictly larger. Exact, by a two-pass radix select on the float bit patterns
    (for x >= 0 they sort like the numbers), so no pass needs the whole tensor at once."""
    def hist(select_hi: int | None) -> torch.Tensor:
        h = torch.zeros(1 << 16, dtype=torch.int64)
        for c in chunks():
            bits = c.reshape(-1).view(torch.int32)
            part = bits >> 16 if select_hi is None else bits[(bits >> 16) == select_hi] & 0xFFFF
            h += torch.bincount(part.to(torch.int64), minlength=1 << 16)
        return h

    def pick(h: torch.Tensor, k: int) -> tuple[int, int]:  # bin holding the k-th largest, # above it
        cum = h.flip(0).cumsum(0)
        i = int(torch.searchsorted(cum, torch.tensor([k]))[0])
        return (1 << 16) - 1 - i, int(cum[i] - h.flip(0)[i])

    hi, above_hi = pick(hist(None), k)
    lo, above_lo = pick(hist(hi), k - above_hi)
    value = torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32).item()
    return value, above_hi + above_lo


class _Trim:
    """Keeps the top-k entries of one task vector by magnitude, chunk by chunk in row-major order.

    k = int(density · numel) as in mergekit, but at least 1, so a small tensor (a norm, a bias) is
    never trimmed away entirely. Magnitudes are compared in float32; entries equal to the cut-off
    value are kept in row-major order until exactly k are kept (mergekit's argsort leaves that
    order unspecified; real weights rarely tie, bf16 ones sometimes do).
    """

    def __init__(self, magnitudes: Callable[[], Iterable[torch.Tensor]], numel: int, density: float):
        k = max(1, int(density * numel))
        self.all = k >= numel
        if not self.all:
            self.cut, above = _kth_largest(magnitudes, k)
            self.ties_left = k - above

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        if self.all:
            return delta
        mag = delta.abs().float()
        keep = mag > self.cut
        if self.ties_left > 0:
            eq = (mag == self.cut).reshape(-1)
            take = eq & (eq.cumsum(0) <= self.ties_left)
            self.ties_left -= int(take.sum())
            keep |= take.view_as(keep)
        return delta * keep


def _ties(base: Rows, models: Sequence[Rows], shape: Sequence[int], weights: Sequence[float],
          density: float, lam: float, out: torch.Tensor) -> torch.Tensor:
    chunks = _row_chunks(shape)
    numel = math.prod(shape)

    def delta(i: int, a: int, b: int) -> torch.Tensor:
        return models[i](a, b).to(torch.float64) - base(a, b).to(torch.float64)

    trims = [_Trim(lambda i=i: (delta(i, a, b).abs().float() for a, b in chunks), numel, density)
             for i in range(len(models))]
    flat = out.view(1) if out.dim() == 0 else out
    for a, b in chunks:
        base_ab = base(a, b).to(torch.float64)
        deltas = torch.stack([trims[i](models[i](a, b).to(torch.float64) - base_ab)
                              for i in range(len(models))])
        w = torch.tensor(list(weights), dtype=torch.float64).view(-1, *([1] * (deltas.dim() - 1)))
        deltas *= w
        sign = torch.sign(deltas.sum(0))
        sign[sign == 0] = 1
        agree = torch.sign(deltas) == sign  # a trimmed (zero) entry never agrees: it is left out
        mixed = (deltas * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor.abs() < 1e-12] = 1.0  # no model kept this entry: mixed is 0, avoid 0/0
        flat[a:b] = (base_ab + lam * (mixed / divisor)).to(out.dtype)
    return out


def _linear(models: Sequence[Rows], shape: Sequence[int], weights: Sequence[float],
            out: torch.Tensor) -> torch.Tensor:
    total = float(sum(weights))
    flat = out.view(1) if out.dim() == 0 else out
    for a, b in _row_chunks(shape):
        acc = torch.zeros(flat[a:b].shape, dtype=torch.float64)
        for m, w in zip(models, weights):
            acc.add_(m(a, b).to(torch.float64), alpha=w / total)
        flat[a:b] = acc.to(out.dtype)
    return out


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of `delta`'s entries by magnitude, zero the rest."""
    _check_density(density)
    return _Trim(lambda: [delta.abs().float()], delta.numel(), density)(delta)


def ties_merge_tensors(base: torch.Tensor, models: Sequence[torch.Tensor],
                       weights: Sequence[float] | None = None, density: float = 1.0,
                       lam: float = 1.0) -> torch.Tensor:
    """TIES-merge one in-memory tensor: trim, elect sign, disjoint (weighted) mean, base + λ·that.

    Arithmetic in float64 (merging identical checkpoints then gives them back bit for bit after
    casting down); returns float64.
    """
    _check_density(density)
    weights = [1.0] * len(models) if weights is None else list(weights)
    out = torch.empty(base.shape, dtype=torch.float64)
    return _ties(_in_memory(base), [_in_memory(m) for m in models], base.shape, weights, density,
                 lam, out)


def linear_merge_tensors(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ w_i t_i / Σ w_i, in float64."""
    out = torch.empty(tensors[0].shape, dtype=torch.float64)
    return _linear([_in_memory(t) for t in tensors], tensors[0].shape, weights, out)


def ema_weights(n: int, alpha: float) -> list[float]:
    """Normalised weights for n checkpoints ordered oldest → newest: w_i ∝ α^(n−1−i).

    α = 0 puts all weight on the newest (0^0 = 1); α = 1 gives the plain mean.
    """
    if not 0.0 <= alpha <= 1.0:
        raise MergeError(f"--alpha must be in [0, 1] (weight α^k for the k-th newest checkpoint), "
                         f"got {alpha}")
    raw = [alpha ** (n - 1 - i) for i in range(n)]
    s = sum(raw)
    return [r / s for r in raw]


def _check_density(density: float) -> None:
    if not (0.0 < density <= 1.0):
        raise MergeError(f"--density must be in (0, 1] (the fraction of each task vector kept), "
                         f"got {density}")


# ----------------------------------------------------------------------------- reading checkpoints
@dataclass
class Checkpoint:
    """A model directory opened lazily: tensor name → (file, name stored in that file)."""

    path: Path
    raw_config: dict
    config: EncoderConfig
    where: dict[str, tuple[Path, str]]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a model directory (config.json + model.safetensors, or a sharded index)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist; check the path")
    if path.is_file() and path.suffix == ".safetensors":
        files = [path]
        path = path.parent
    elif (path / WEIGHTS_NAME).is_file():
        files = [path / WEIGHTS_NAME]
    elif (path / INDEX_NAME).is_file():
        index = json.loads((path / INDEX_NAME).read_text())
        files = sorted({path / f for f in index["weight_map"].values()})
    elif (path / "pytorch_model.bin").exists():
        raise MergeError(f"{path} holds only pytorch_model.bin; mmbert reads safetensors only (no "
                         f"pickle): re-save it with save_pretrained(..., safe_serialization=True)")
    else:
        raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}; pass a model directory "
                                f"(config.json + {WEIGHTS_NAME})")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json; a model directory needs one")
    raw = json.loads(cfg_path.read_text())
    config = EncoderConfig.load_json(cfg_path)

    where: dict[str, tuple[Path, str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for f in files:
        try:
            h = safe_open(f, framework="pt")
        except Exception as e:  # SafetensorError: truncated or not safetensors at all
            raise MergeError(f"{f} is not a readable safetensors file ({e}); it is truncated or corrupt — "
                             f"re-export or re-download it") from None
        with h:
            for name in h.keys():
                sl = h.get_slice(name)
                where[name] = (f, name)
                shapes[name] = tuple(sl.get_shape())
                dtypes[name] = sl.get_dtype()
    # Tied decoder: read it once, under the embedding name.
    if DECODER in where and config.tie_word_embeddings:
        if EMBED not in where:
            where[EMBED] = where[DECODER]
            shapes[EMBED], dtypes[EMBED] = shapes[DECODER], dtypes[DECODER]
        del where[DECODER], shapes[DECODER], dtypes[DECODER]
    return Checkpoint(path, raw, config, where, shapes, dtypes)


# ----------------------------------------------------------------------------- validation
def _check_compatible(models: list[Checkpoint], base: Checkpoint | None) -> None:
    ref = models[0]
    for other in models[1:] + ([base] if base is not None else []):
        role = "base" if other is base else "model"
        fields = SHAPE_FIELDS if other is base else ARCH_FIELDS
        for f in fields:
            a, b = getattr(ref.config, f), getattr(other.config, f)
            if a != b:
                what = "vocabularies" if f == "vocab_size" else f"configs ({f})"
                raise MergeError(f"cannot merge: {role} {other.path} and {ref.path} have different "
                                 f"{what}: {b} vs {a}; only checkpoints of one architecture and "
                                 f"tokenizer can be merged")
        missing, extra = set(ref.where) - set(other.where), set(other.where) - set(ref.where)
        if missing or extra:
            raise MergeError(f"cannot merge: {role} {other.path} and {ref.path} hold different "
                             f"tensors (only in {ref.path.name}: {sorted(missing)[:3]}, only in "
                             f"{other.path.name}: {sorted(extra)[:3]}); use checkpoints with the "
                             f"same head (e.g. all MLM)")
        for name, shape in ref.shapes.items():
            if other.shapes[name] != shape:
                raise MergeError(f"cannot merge: tensor {name} has shape {list(other.shapes[name])} "
                                 f"in {other.path} but {list(shape)} in {ref.path}; only "
                                 f"checkpoints of the same size can be merged")
    # Same vocab size with a different tokenizer would merge silently into garbage.
    tok = [(c.path, (c.path / "tokenizer.json").read_bytes()) for c in models + ([base] if base else [])
           if (c.path / "tokenizer.json").is_file()]
    for p, data in tok[1:]:
        if data != tok[0][1]:
            raise MergeError(f"cannot merge: {p} and {tok[0][0]} have different tokenizer.json "
                             f"files; merged models must share one tokenizer")


# ----------------------------------------------------------------------------- writing
def write_model_dir(out: Path, tensors: dict[str, torch.Tensor], raw_config: dict,
                    tokenizer_from: Path | None = None, record: dict | None = None,
                    record_name: str = "merge.json", card=None) -> None:
    """Write config.json, model.safetensors, tokenizer files, (optionally) a JSON record, and the
    model card + sentence-transformers files (export/card.py; `card` a CardInfo) as one step: built
    beside `out` and swapped into place whole (utils.publish_dir), so `--overwrite` never leaves new
    weights beside an old config; other files already in `out` are kept."""
    with RunLock(out), publish_dir(out, carry=lambda n: _not_model_file(n) and n != record_name) as tmp:
        atomic_write(tmp / WEIGHTS_NAME, lambda t: save_file(tensors, t, metadata={"format": "pt"}))
        atomic_write(tmp / "config.json", json.dumps(raw_config, indent=2) + "\n")
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                src = tokenizer_from / name
                if src.is_file():
                    shutil.copyfile(src, tmp / name)
        if record is not None:
            atomic_write(tmp / record_name, json.dumps(record, indent=2) + "\n")
        write_card_files(tmp, raw_config, card)


# ----------------------------------------------------------------------------- entry point
def merge(models: Sequence[str | Path], out: str | Path, method: str = "linear",
          base: str | Path | None = None, weights: Sequence[float] | None = None,
          density: float = 1.0, lam: float = 1.0, alpha: float = 0.5,
          overwrite: bool = False, progress: bool = True) -> Path:
    """Merge model directories into `out` and return it.

    method "ties" needs `base`; `weights` (one per model) default to 1 for TIES and to equal
    weights for "linear"; "ema" takes the models oldest → newest and weights them α^k from the
    newest. Output tensors keep the first model's dtypes.
    """
    weights = _checked_weights(models, method, base, weights, density, alpha)
    out = Path(out)
    ckpts = [open_checkpoint(m) for m in models]
    base_ckpt = open_checkpoint(base) if base is not None else None
    inputs = {c.path.resolve() for c in ckpts + ([base_ckpt] if base_ckpt else [])}
    if out.resolve() in inputs:
        raise MergeError(f"--out {out} is one of the inputs; write the merge to a new directory")
    if (out / WEIGHTS_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out / WEIGHTS_NAME} already exists; choose another --out or "
                              f"pass --overwrite")
    _check_compatible(ckpts, base_ckpt)

    merged = _merge_tensors(ckpts, base_ckpt, method, weights, density, lam, progress)
    if ckpts[0].config.tie_word_embeddings:
        merged.pop(DECODER, None)  # never stored when tied (see module docstring)
    record = {
        "method": method,
        "models": [str(c.path.resolve()) for c in ckpts],
        "base": str(base_ckpt.path.resolve()) if base_ckpt else None,
        "weights": weights,
        "density": density if method == "ties" else None,
        "lambda": lam if method == "ties" else None,
        "alpha": alpha if method == "ema" else None,
        "num_tensors": len(merged),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mmbert_version": __version__,
    }
    how = (f"{method.upper() if method == 'ties' else method} merge of {len(ckpts)} models"
           + (f" relative to base `{base}` (density {density:g}, λ {lam:g})" if method == "ties" else "")
           + f", weights {[round(w, 4) for w in weights]} (merge.json has the details).")
    card = merged_card([str(m) for m in models] + ([str(base)] if base is not None else []), "merge", how)
    write_model_dir(out, merged, ckpts[0].raw_config, tokenizer_from=ckpts[0].path, record=record, card=card)
    return out


def _checked_weights(models: Sequence[str | Path], method: str, base, weights: Sequence[float] | None,
                     density: float, alpha: float) -> list[float]:
    """The per-model weights `merge` uses, after refusing settings that do not go together."""
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    if not models:
        raise MergeError("no models to merge; pass at least one model directory with --models")
    if method == "ties":
        if base is None:
            raise MergeError("TIES merges task vectors relative to a base: pass --base (the "
                             "checkpoint the merged models were trained from)")
        _check_density(density)
    elif base is not None:
        raise MergeError(f"--base is only used by --method ties, not {method}; drop it")
    if method == "ema":
        if weights is not None:
            raise MergeError("--method ema derives the weights from --alpha; drop --weights")
        weights = ema_weights(len(models), alpha)
    if weights is None:
        weights = [1.0] * len(models)
    weights = [float(w) for w in weights]
    if len(weights) != len(models):
        raise MergeError(f"got {len(weights)} weights for {len(models)} models; pass one weight "
                         f"per model")
    if method in ("linear", "ema") and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise MergeError(f"linear weights must be >= 0 with a positive sum, got {weights}")
    return weights


def _merge_tensors(ckpts: list[Checkpoint], base_ckpt: Checkpoint | None, method: str, weights: list[float],
                   density: float, lam: float, progress: bool) -> dict[str, torch.Tensor]:
    """Every tensor of the first checkpoint merged, read row block by row block from the safetensors files."""
    merged: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        handles: dict[Path, object] = {}

        def read(c: Checkpoint, name: str) -> torch.Tensor:
            f, stored = c.where[name]
            if f not in handles:
                handles[f] = stack.enter_context(safe_open(f, framework="pt"))
            return handles[f].get_tensor(stored)

        def rows(c: Checkpoint, name: str) -> Rows:
            f, stored = c.where[name]
            if f not in handles:
                handles[f] = stack.enter_context(safe_open(f, framework="pt"))
            sl = handles[f].get_slice(stored)
            if not sl.get_shape():
                return lambda a, b: handles[f].get_tensor(stored).reshape(1)[a:b]
            return lambda a, b: sl[a:b]

        names = sorted(ckpts[0].where)
        for name in tqdm(names, desc=f"merge ({method})", disable=not progress):
            shape = ckpts[0].shapes[name]
            dtype = _DTYPES.get(ckpts[0].dtypes[name])
            if dtype is None or not dtype.is_floating_point:  # integer buffers (none in ModernBERT)
                tensors = [read(c, name) for c in ckpts]
                if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
                    raise MergeError(f"non-float tensor {name} differs between models; it cannot "
                                     f"be averaged")
                merged[name] = tensors[0].clone()
                continue
            out_t = torch.empty(shape, dtype=dtype)
            if method == "ties":
                _ties(rows(base_ckpt, name), [rows(c, name) for c in ckpts], shape, weights,
                      density, lam, out_t)
            else:
                _linear([rows(c, name) for c in ckpts], shape, weights, out_t)
            merged[name] = out_t
    return merged
