"""Checkpoints: exact round trip, atomic under a crash, keep-last-K, clear shape errors; optimizer groups."""

import os
import random
import subprocess

import numpy as np
import pytest
import torch

from mmbert import EncoderConfig
from mmbert.model import build_model
from mmbert.train import checkpoint as C
from mmbert.train.optim import build_optimizer, param_groups
from mmbert.utils import HOST


def tiny(hidden=32, layers=2):
    cfg = EncoderConfig.from_preset("tiny", vocab_size=128, hidden_size=hidden, intermediate_size=64,
                                    num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
                                    local_attention=16)
    return build_model(cfg)


def _step(model, opt, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (2, 12), generator=g)
    out = model(ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad()


def test_param_groups_exclude_norms_and_biases():
    m = tiny()
    groups = {g["name"]: g for g in param_groups(m, 0.1)}
    names = {id(p): n for n, p in m.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert "model.embeddings.norm.weight" in no_decay and "decoder.bias" in no_decay
    assert "head.norm.weight" in no_decay and "model.final_norm.weight" in no_decay
    assert "model.embeddings.tok_embeddings.weight" in decay and "model.layers.0.attn.Wqkv.weight" in decay
    assert not decay & no_decay
    assert groups["no_decay"]["weight_decay"] == 0.0
    # tied decoder weight counted once
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == m.num_parameters()


def test_roundtrip_is_exact_including_rng(tmp_path):
    torch.manual_seed(0)
    m = tiny()
    opt = build_optimizer(m, lr=1e-3, weight_decay=1e-4)
    _step(m, opt)
    random.seed(5); np.random.seed(5)
    path = C.save_checkpoint(tmp_path / "ck", 7, model=m, optimizer=opt, train_state={"tokens": 123},
                             loader_state={"pos": np.arange(3, dtype=np.int64), "t": (1, 2)}, run_config={"a": 1})
    expect_rng = (torch.rand(3), np.random.rand(), random.random())
    _step(m, opt, seed=1)
    ref = {k: v.clone() for k, v in m.state_dict().items()}

    torch.manual_seed(99)
    m2 = tiny()
    opt2 = build_optimizer(m2, lr=1e-3, weight_decay=1e-4)
    st = C.load_checkpoint(path, model=m2, optimizer=opt2)
    assert st["train_state"]["tokens"] == 123 and st["train_state"]["step"] == 7
    assert st["run_config"] == {"a": 1}
    np.testing.assert_array_equal(st["loader_state"]["pos"], np.arange(3))
    assert st["loader_state"]["t"] == (1, 2)
    got_rng = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expect_rng[0], got_rng[0]) and expect_rng[1:] == got_rng[1:]
    _step(m2, opt2, seed=1)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the checkpoint directory is also a model directory (config.json + model.safetensors)
    assert (path / "config.json").is_file()
    assert m2.decoder.weight is m2.model.embeddings.tok_embeddings.weight


def test_crash_during_save_leaves_no_half_written_checkpoint(tmp_path, monkeypatch):
    m = tiny()
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.0)
    root = tmp_path / "ck"
    good = C.save_checkpoint(root, 1, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    real = C._torch_save

    def crash(obj, path):
        if path.name == "rng.pt":
            raise KeyboardInterrupt("simulated kill during save")
        real(obj, path)

    monkeypatch.setattr(C, "_torch_save", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(root, 2, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    assert C.latest_checkpoint(root) == good
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]
    # a kill that even skipped the cleanup leaves only a hidden temp dir, ignored and later removed
    # (its writer is dead); a live writer's temp dir is never touched
    dead = _dead_pid()
    stale = root / f".step_00000003.tmp-{dead}@{HOST}"
    live = root / f".step_00000005.tmp-{os.getpid()}@{HOST}"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    assert C.latest_checkpoint(root) == good
    monkeypatch.setattr(C, "_torch_save", real)
    C.save_checkpoint(root, 4, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    assert sorted(p.name for p in root.iterdir()) == [live.name, "step_00000001", "step_00000004"]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_keep_last_k_spares_kept(tmp_path):
    m = tiny()
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.0)
    root = tmp_path / "ck"
    for s in range(1, 6):
        C.save_checkpoint(root, s, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={},
                          keep_last=2, keep=(s == 2))
    assert [p.name for p in C.list_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000005"]


def test_other_model_shape_is_a_clear_error(tmp_path):
    m = tiny(hidden=32)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.0)
    path = C.save_checkpoint(tmp_path, 1, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    other = tiny(hidden=64)
    with pytest.raises(C.CheckpointError, match="another shape"):
        C.load_checkpoint(path, model=other)
    deeper = tiny(layers=1)
    with pytest.raises(C.CheckpointError, match="another model"):
        C.load_checkpoint(path, model=deeper)
    with pytest.raises(C.CheckpointError, match="not a complete"):
        C.load_checkpoint(tmp_path, model=m)
