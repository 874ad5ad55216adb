"""Shared pieces of the training tests: the tiny synthetic shards (a session fixture over
`synthetic.write_learnable_shards`), a tiny model config, a tiny recipe.

(A module with a unique name, not conftest.py: several test folders have a conftest, and
`from conftest import …` would pick whichever was imported first.)"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

_TESTS = str(Path(__file__).resolve().parents[1])  # tests/: pytest puts it on sys.path, the torchrun workers do not
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
from synthetic import VOCAB, write_learnable_shards  # noqa: E402

from mmbert import EncoderConfig  # noqa: E402
from mmbert.train.recipe import Phase, Recipe  # noqa: E402

# the machine is shared and small: one intra-op thread avoids OpenMP oversubscription stalls
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_learnable_shards(root)
    return root


def tiny_config(**kw) -> EncoderConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=128, local_attention=16)
    base.update(kw)
    return EncoderConfig.from_preset("tiny", **base)


def tiny_recipe(scale: float = 1, batch_warmup: bool = True, **kw) -> Recipe:
    """pretrain (seq 32, top:2, τ .7, mask .3) → mid (seq 64, top:3, θ 160k) → decay variants
    (all / top:3), 1-sqrt decay; ≈ 30 steps on the main track at scale=1."""
    common = dict(global_rope_theta=10_000.0, local_rope_theta=10_000.0, lr_peak=3e-3, weight_decay=1e-4)
    pre = Phase("pretrain", tokens=int(32 * 8 * 20 * scale), seq_len=32, languages="top:2", temperature=0.7,
                mask_rate=0.3, lr_warmup_tokens=32 * 8 * 4, batch_tokens=32 * 8,
                batch_warmup_tokens=32 * 8 * 4 if batch_warmup else 0, batch_start_tokens=32 * 4, **common)
    mid = dataclasses.replace(pre, name="mid", tokens=int(64 * 4 * 10 * scale), seq_len=64, languages="top:3",
                              temperature=0.5, mask_rate=0.15, global_rope_theta=160_000.0,
                              local_rope_theta=160_000.0, lr_warmup_tokens=0, batch_tokens=64 * 4,
                              batch_warmup_tokens=0, batch_start_tokens=None)
    decay = dataclasses.replace(mid, name="decay-all", tokens=int(64 * 4 * 4 * scale), languages="all", temperature=0.3,
                                mask_rate=0.05, lr_decay="1-sqrt", lr_final_fraction=0.02)
    args = dict(name="tiny-test", phases=(pre, mid),
                variants={"decay-all": (decay,),
                          "decay-cont": (dataclasses.replace(decay, name="decay-cont", languages="top:3",
                                                             temperature=0.5),)},
                preset="tiny", eval_every_tokens=10**9, checkpoint_every_tokens=32 * 8 * 6,
                eval_tokens_per_lang=256, log_every_steps=1,
                grad_clip=1.0)  # the golden losses were recorded with clipping (the Recipe default is off)
    args.update(kw)
    return Recipe(**args)


def poison_loss_after(monkeypatch, calls: int = 40):
    """Make the training loop's loss NaN from micro-batch `calls`+1 on (a divergence mid-run, after
    some checkpoints exist); returns the real loss function, to put back with monkeypatch.setattr."""
    import mmbert.train.loop as loop

    real, seen = loop.mlm_loss_fn, {"n": 0}

    def poisoned(model, batch):
        seen["n"] += 1
        loss, n = real(model, batch)
        return (loss * float("nan") if seen["n"] > calls else loss), n

    monkeypatch.setattr(loop, "mlm_loss_fn", poisoned)
    return real
