"""The run directory's own files: the run.json guard and metrics.jsonl.

    with RunLock(out):
        scale = open_run_dir(out, identity, resume=False, launch={...})   # run.json, or one clear error
        metrics = Metrics(out, enabled=True)
        metrics.log({"type": "train", "track": "main", "step": 1, "tokens": 4096, "loss": 9.1})

run.json says what the run is (recipe, model config, seed, data: its "identity") and lists every
launch; a directory holding another run, or anything else, is refused before a byte is written.
metrics.jsonl holds one JSON record per step ("train") and per evaluation ("eval"); a resume first
drops the records a killed process wrote after its last checkpoint, so every step is logged once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mmbert.utils import atomic_write, sweep_stale


class RunDirError(FileExistsError):
    """The output directory holds something else; nothing was overwritten."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


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


def open_run_dir(out: Path, identity: dict[str, Any], resume: bool, launch: dict[str, Any],
                 lr_scale: float | None) -> None:
    """The guard, then this launch appended to run.json (with `lr_scale` when given: an explicit
    override is kept for every later resume), then what dead writers left swept away. Call it
    holding the run's lock (utils.RunLock), on one process."""
    prepare_run_dir(out, identity, resume)
    info = json.loads((out / "run.json").read_text())
    if lr_scale is not None:
        launch["lr_scale"] = info["lr_scale"] = lr_scale
    info.setdefault("launches", []).append(launch)
    atomic_write(out / "run.json", json.dumps(info, indent=2, sort_keys=True))
    sweep_run_dir(out)


def run_lr_scale(out: Path) -> float:
    """The learning-rate factor in force for this run (run.json's last explicit --lr-scale, else 1)."""
    return float(json.loads((out / "run.json").read_text()).get("lr_scale", 1.0))


def sweep_run_dir(out: Path) -> None:
    """Remove what dead writers left in the run directory (temp files, temp exports, checkpoints
    half-way through a save or a delete); a live process's are never touched (the lock makes that
    this process anyway)."""
    for d in (out, out / "export", out / "plots", *sorted((out / "checkpoints").glob("*"))):
        if d.is_dir():
            sweep_stale(d)


class Metrics:
    """metrics.jsonl (rank 0), plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled, self.tb = out / "metrics.jsonl", enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency

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
