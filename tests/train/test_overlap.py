"""The loader runs beside the step: after the first step of a phase, every step's micro-batches
were made by the background producer thread while the previous step computed — and the losses are
those of the golden run (tests/assets/golden_losses_tiny.json, checked in test_loop.py with the
same code path; here: a run with the producer equals a run forced synchronous, bit for bit)."""

import json
import threading

from mmbert.data import loader as loader_mod
from mmbert.train import loop as loop_mod
from mmbert.train.loop import train

from tinyrun import tiny_config, tiny_recipe


def _losses(run):
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in ln]


def test_batches_are_made_in_the_background_and_change_nothing(shards, tmp_path, monkeypatch):
    made_by = []
    real = loader_mod.MLMLoader.next_batch

    def recording(self, rows=None):
        made_by.append(threading.current_thread().name)
        return real(self, rows)

    monkeypatch.setattr(loader_mod.MLMLoader, "next_batch", recording)
    kw = dict(phases=["pretrain"], micro_batch_tokens=128, progress=False, eval=False, plots=False, stop_at_step=8)
    train(tiny_recipe(), tiny_config(), shards, tmp_path / "bg", **kw)
    background = sum(n.startswith("mmbert-loader") for n in made_by)
    assert background >= len(made_by) - 2, made_by  # all but the first step's micro-batches

    # the same run with the producer switched off (every step made synchronously)
    monkeypatch.setattr(loop_mod._Stream, "prefetch", lambda self, p, rows: None)
    made_by.clear()
    train(tiny_recipe(), tiny_config(), shards, tmp_path / "sync", **kw)
    assert not any(n.startswith("mmbert-loader") for n in made_by)
    assert _losses(tmp_path / "bg") == _losses(tmp_path / "sync")
