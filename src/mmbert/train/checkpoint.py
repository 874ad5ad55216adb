"""Training checkpoints that explain themselves and resume exactly.

    from mmbert.train.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
    path = save_checkpoint(run / "checkpoints", step, model=m, optimizer=o, train_state={...},
                           loader_state=loader.state_dict(), run_config={...}, keep_last=3)
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"), model=m, optimizer=o)

One checkpoint is one directory `step_XXXXXXXX/`:
  config.json         the model's config (HF ModernBERT dialect) — with model.safetensors this is
  model.safetensors   also a model directory `mmbert.from_pretrained` loads (tied decoder not stored)
  optimizer.pt        optimizer state_dict (tensors and numbers only: loads with weights_only=True)
  loader.pt           the data loader's state_dict (numpy arrays stored as tensors)
  rng.pt              torch / CUDA / numpy / python RNG states
  state.json          step, tokens, phase, track, … (the schedule position)
  run.json            the resolved run configuration (recipe, model config, options)
Writing is atomic: everything goes to a hidden `.step_….tmp-<pid>@<host>` directory first, which is
fsynced and renamed into place only when complete, so a crash during a save never leaves a
half-written `step_…`; pruning renames a checkpoint out of the listing before deleting it. A
checkpoint counts only when all seven files are there; weights with NaN/inf are never saved.
Nothing is unpickled on load: safetensors for weights, `torch.load(weights_only=True)` otherwise.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mmbert.utils import crash_point, publish_dir, sweep_stale, temp_name, unwrap

PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: the message says why and what to do."""


# ------------------------------------------------------------------ weights_only-safe encoding

def _encode(obj: Any) -> Any:
    """numpy arrays/scalars and tuples → types `torch.load(weights_only=True)` accepts. Strings are
    interned: pickle writes a repeated string once and then by reference, so equal states must
    share their equal strings for a resumed run's files to equal the uninterrupted run's byte for byte."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {_encode(k): _encode(v) for k, v in obj.items()}
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj["dtype"], copy=False)
        if "__tuple__" in obj:
            return tuple(_decode(x) for x in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def _torch_save(obj: Any, path: Path) -> None:
    torch.save(_encode(obj), path)


def _torch_load(path: Path) -> Any:
    return _decode(torch.load(path, map_location="cpu", weights_only=True))


# ------------------------------------------------------------------ RNG

def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------ model weights

def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) state dict on CPU, tied duplicates dropped (decoder.weight)."""
    model = unwrap(model)
    if _is_sharded(model):  # FSDP2: gather full tensors (every rank must call this)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = model.state_dict()
    out, seen = {}, {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in sd.items():
        p = params.get(name)
        key = id(p) if p is not None else None
        if key is not None and key in seen:
            continue  # tied weight: stored once under its first name
        if key is not None:
            seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def check_shapes(path: Path, model: nn.Module) -> None:
    """Clear error when the checkpoint was written for a model of another shape."""
    expected = {k: tuple(v.shape) for k, v in unwrap(model).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for k, shape in stored.items():
        if k not in expected:
            raise CheckpointError(f"checkpoint {path.parent} holds tensor {k!r} that this model does not have; "
                                  f"it was written for another model — resume with the same --preset, or "
                                  f"use a new --out directory")
        if expected[k] != shape and not _is_sharded(model):
            raise CheckpointError(f"checkpoint {path.parent} was written for a model of another shape: "
                                  f"{k} is {list(shape)} there but {list(expected[k])} in this model; resume "
                                  f"with the preset it was trained with, or use a new --out directory")


def load_model_weights(path: Path, model: nn.Module, sd: dict[str, torch.Tensor] | None = None) -> None:
    check_shapes(path, model)
    sd = load_file(str(path)) if sd is None else sd
    inner = unwrap(model)
    if _is_sharded(inner):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(inner, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    missing, unexpected = inner.load_state_dict(sd, strict=False)
    params = dict(inner.named_parameters(remove_duplicate=False))
    first = {}
    for name, p in params.items():
        first.setdefault(id(p), name)
    really_missing = [k for k in missing if k not in params or first[id(params[k])] == k]
    if really_missing or unexpected:
        raise CheckpointError(f"checkpoint {path.parent} does not match this model: missing "
                              f"{really_missing[:5]}, unexpected {list(unexpected)[:5]}")


# ------------------------------------------------------------------ optimizer

def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    if _is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, sd: dict[str, Any]) -> None:
    if _is_sharded(unwrap(model)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), optimizer, sd, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(sd)


# ------------------------------------------------------------------ save / find / load

FILES = ("model.safetensors", "config.json", "optimizer.pt", "loader.pt", "rng.pt", "run.json", "state.json")
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files cannot be read back (truncated, corrupt) or that holds non-finite
    weights: resume skips it for an older one."""


class NonFiniteWeights(CheckpointError):
    """The weights to be saved hold NaN/inf: such a checkpoint is never written (never "last good")."""


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root` (every file present), oldest first; hidden temp and
    being-deleted directories are ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir() and all((p / f).is_file() for f in FILES)]
    return sorted(out, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """state.json of a checkpoint; {} when unreadable."""
    try:
        return json.loads((Path(path) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def has_finite_weights(path: str | os.PathLike) -> bool:
    """True when every floating tensor of the checkpoint is finite (state.json records the check
    made at save time; checkpoints from before it are scanned)."""
    path = Path(path)
    finite = read_state(path).get("finite")
    if finite is not None:
        return bool(finite)
    try:
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            return all(bool(torch.isfinite(t).all()) for t in (f.get_tensor(k) for k in f.keys())
                       if t.is_floating_point())
    except Exception:  # unreadable: not good either
        return False


def last_good_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint whose weights are all finite."""
    for p in reversed(list_checkpoints(root)):
        if has_finite_weights(p):
            return p
    return None


def non_finite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a plain bool without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(flag)], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def save_checkpoint(root: str | os.PathLike, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    train_state: dict[str, Any], loader_state: Any, run_config: dict[str, Any],
                    keep_last: int | None = 3, keep: bool = False, write: bool = True) -> Path:
    """Write `root/step_<step>` atomically (utils.publish_dir: temp dir, fsync, one rename); then
    delete all but the newest `keep_last` checkpoints (those saved with keep=True, e.g. phase ends,
    are never deleted). Weights holding NaN/inf are refused with NonFiniteWeights (nothing written).

    Under torch.distributed every rank calls this (FSDP2 gathers need all ranks); only the rank
    with write=True touches the disk.
    """
    root = Path(root)
    weights = model_state(model)
    bad = non_finite_tensors(weights)
    if _any_rank(bool(bad)):  # FSDP: only the writing rank holds the full weights; all ranks must stop
        raise NonFiniteWeights(f"the weights hold NaN/inf ({', '.join(bad[:3]) or 'on another rank'}"
                               f"{' …' if len(bad) > 3 else ''}) at step {step}; checkpoint not written")
    optim = optimizer_state(optimizer, model)
    final = root / f"{PREFIX}{step:08d}"
    if not write:
        return final
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root)  # temps and half-deleted checkpoints of dead processes
    with publish_dir(final) as tmp:  # re-saving the same step replaces it in one rename
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = unwrap(model).config
        _write_json(tmp / "config.json", config.to_hf_dict())
        _torch_save(optim, tmp / "optimizer.pt")
        _torch_save(loader_state, tmp / "loader.pt")
        _torch_save(rng_state(), tmp / "rng.pt")
        _write_json(tmp / "run.json", run_config)
        _write_json(tmp / "state.json", {**train_state, "step": step, "keep": keep, "finite": True})
    if keep_last:
        prunable = [p for p in list_checkpoints(root) if not read_state(p).get("keep")]
        for p in prunable[:-keep_last]:
            # first out of the listing in one rename, then deleted: a kill during the delete leaves
            # a hidden .del- directory (removed by the next sweep), never a half-deleted step_
            gone = root / temp_name(p.name, "del")
            crash_point(f"prune:{p.name}")
            os.rename(p, gone)
            shutil.rmtree(gone, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore weights (+ optimizer, RNG) in place; returns {"train_state", "loader_state", "run_config"}.
    Every file is read before anything is changed: a damaged checkpoint (CheckpointDamaged) leaves
    the model, optimizer and RNG as they were."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointDamaged(f"{path} is not a complete training checkpoint (no {', '.join(missing)})")
    try:
        check_shapes(path / "model.safetensors", model)  # CheckpointError (another model) passes through
        weights = load_file(str(path / "model.safetensors"))
        optim = _torch_load(path / "optimizer.pt") if optimizer is not None else None
        rng = _torch_load(path / "rng.pt") if restore_rng else None
        out = {
            "train_state": json.loads((path / "state.json").read_text()),
            "loader_state": _torch_load(path / "loader.pt"),
            "run_config": json.loads((path / "run.json").read_text()),
        }
    except CheckpointError:
        raise
    except Exception as e:  # truncated safetensors / zip, bad JSON: the file, not the caller, is wrong
        first = str(e).split(". ")[0][:160]
        raise CheckpointDamaged(f"{path} is damaged ({type(e).__name__}: {first})") from e
    bad = non_finite_tensors(weights)
    if bad:
        raise CheckpointDamaged(f"{path} holds non-finite weights ({', '.join(bad[:3])})")
    load_model_weights(path / "model.safetensors", model, weights)
    if optimizer is not None:
        load_optimizer_state(optimizer, model, optim)
    if restore_rng:
        set_rng_state(rng)
    return out
