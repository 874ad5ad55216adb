"""Tests for mmbert.init_from: index maps, grow (tile from the middle, Gopher depth), shrink
(whole heads, aligned GLU halves, magnitude/strided rules), directories and CLI."""

from __future__ import annotations

import json

import pytest
import torch

import mmbert
from mmbert import EncoderConfig
from mmbert.cli import main as cli_main
from mmbert.export.hf import save_pretrained, to_hf_state_dict
from mmbert.init_from import (TransferError, gopher_layer_map, grow, init_from, shrink,
                              spread_layer_map, strided, target_config, tile_from_middle,
                              transfer_state_dict)
from mmbert.model import build_model

SRC = EncoderConfig(vocab_size=48, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=4, local_attention=16, max_position_embeddings=64)
BIG = SRC.replace(hidden_size=56, intermediate_size=40, num_hidden_layers=5, num_attention_heads=7)
SMALL = SRC.replace(hidden_size=16, intermediate_size=10, num_hidden_layers=1, num_attention_heads=2)


def state_of(cfg: EncoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A model's weights under transformers names, norms randomised too so copies are traceable."""
    torch.manual_seed(seed)
    sd = to_hf_state_dict(build_model(cfg))
    return {k: torch.randn_like(v) for k, v in sd.items()}


def runs(cfg: EncoderConfig, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Load `sd` strictly into our model of shape `cfg` and return MLM logits."""
    from mmbert.export.hf import load_hf_state_dict

    model = build_model(cfg).eval()
    assert load_hf_state_dict(model, sd) == []  # every weight present, no fresh head weights
    with torch.no_grad():
        logits = model(torch.tensor([[2, 7, 9, 11, 13, 1]])).logits
    assert logits.shape == (1, 6, cfg.vocab_size) and torch.isfinite(logits).all()
    return logits


def split_qkv(w: torch.Tensor, nh: int) -> torch.Tensor:
    """[3·H, H_in] → [3, heads, head_dim, H_in], written out with plain slicing."""
    H = w.shape[0] // 3
    hd = H // nh
    return torch.stack([torch.stack([w[p * H + h * hd: p * H + (h + 1) * hd] for h in range(nh)])
                        for p in range(3)])


# ----------------------------------------------------------------------------- index maps
def test_layer_maps_by_hand():
    assert gopher_layer_map(3, 6) == [0, 1, 1, 2, 2, 2]  # i/2 rounded half up: 0 .5 1 1.5 2 2.5→clamp
    assert gopher_layer_map(2, 5) == [0, 0, 1, 1, 1]  # 0 .4 .8 1.2 1.6→2, clamped to 1
    assert gopher_layer_map(22, 28)[-1] == 21 and gopher_layer_map(4, 4) == [0, 1, 2, 3]
    assert spread_layer_map(6, 3) == [0, 3, 5]  # ends kept, 2.5 rounds up
    assert spread_layer_map(22, 22) == list(range(22)) and spread_layer_map(5, 1) == [4]


def test_tile_from_middle_and_strided_by_hand():
    # offset (7-4)//2 = 1: the source block sits at 1..4, wrapped periodically outward
    assert tile_from_middle(4, 7).tolist() == [3, 0, 1, 2, 3, 0, 1]
    assert tile_from_middle(3, 3).tolist() == [0, 1, 2]
    assert tile_from_middle(2, 8).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert strided(8, 4).tolist() == [0, 2, 4, 6] and strided(10, 3).tolist() == [0, 3, 6]


# ----------------------------------------------------------------------------- grow
def test_grow_shapes_match_target_and_model_runs():
    sd = state_of(SRC)
    new = grow(sd, SRC, BIG)
    want = {k: v.shape for k, v in to_hf_state_dict(build_model(BIG)).items()}
    assert {k: v.shape for k, v in new.items()} == want
    runs(BIG, new)


def test_grow_to_preset_shape():
    half = EncoderConfig.from_preset("tiny", vocab_size=64, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=3, num_attention_heads=2)
    dst = target_config(half, preset="tiny")
    tiny = EncoderConfig.from_preset("tiny")
    for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(dst, f) == getattr(tiny, f)
    assert dst.vocab_size == 64  # vocabulary kept from the source
    runs(dst, grow(state_of(half), half, dst))


def test_grow_identity_when_sizes_equal():
    sd = state_of(SRC)
    new = grow(sd, SRC, SRC)
    assert new.keys() == sd.keys() and all(torch.equal(new[k], sd[k]) for k in sd)


def test_grow_copied_blocks_land_where_documented():
    sd = state_of(SRC, seed=3)
    new = grow(sd, SRC, BIG)
    H0, H1, I0, I1 = SRC.hidden_size, BIG.hidden_size, SRC.intermediate_size, BIG.intermediate_size
    off = (H1 - H0) // 2
    hid = [(t - off) % H0 for t in range(H1)]
    heads = [(h - (7 - 4) // 2) % 4 for h in range(7)]  # [3, 0, 1, 2, 3, 0, 1]
    units = [(u - (I1 - I0) // 2) % I0 for u in range(I1)]
    emb = "model.embeddings.tok_embeddings.weight"
    # embeddings: the source block sits in the centre, columns wrap around periodically
    assert torch.equal(new[emb][:, off:off + H0], sd[emb])
    for t in range(H1):
        assert torch.equal(new[emb][:, t], sd[emb][:, hid[t]])
    layers = gopher_layer_map(2, 5)  # [0, 0, 1, 1, 1]
    for i, j in enumerate(layers):
        q_new, q_old = f"model.layers.{i}.", f"model.layers.{j}."
        a, b = split_qkv(new[q_new + "attn.Wqkv.weight"], 7), split_qkv(sd[q_old + "attn.Wqkv.weight"], 4)
        for part in range(3):  # q, k, v each tiled per whole head
            for h in range(7):
                assert torch.equal(a[part, h], b[part, heads[h]][:, hid])
        wo_new, wo_old = new[q_new + "attn.Wo.weight"], sd[q_old + "attn.Wo.weight"]
        hd = SRC.head_dim
        for h in range(7):  # Wo columns follow the same head map
            assert torch.equal(wo_new[:, h * hd:(h + 1) * hd], wo_old[hid][:, heads[h] * hd:(heads[h] + 1) * hd])
        wi_new, wi_old = new[q_new + "mlp.Wi.weight"], sd[q_old + "mlp.Wi.weight"]
        for u in range(I1):  # input half and gate half tiled separately, unit u paired with Wo col u
            assert torch.equal(wi_new[u], wi_old[units[u]][hid])
            assert torch.equal(wi_new[I1 + u], wi_old[I0 + units[u]][hid])
            assert torch.equal(new[q_new + "mlp.Wo.weight"][:, u], sd[q_old + "mlp.Wo.weight"][hid, units[u]])
        assert torch.equal(new[q_new + "mlp_norm.weight"], sd[q_old + "mlp_norm.weight"][hid])
        if i > 0 and j == 0:  # copied from layer 0, which has no attn_norm: a fresh LayerNorm
            assert torch.equal(new[q_new + "attn_norm.weight"], torch.ones(H1))
    assert "model.layers.0.attn_norm.weight" not in new
    assert torch.equal(new["head.dense.weight"], sd["head.dense.weight"][hid][:, hid])
    assert torch.equal(new["decoder.bias"], sd["decoder.bias"])


def test_grow_head_dim_keeps_rotary_pairs():
    src = SRC.replace(hidden_size=32, num_attention_heads=4)  # head_dim 8
    dst = SRC.replace(hidden_size=48, num_attention_heads=4)  # head_dim 12
    sd = state_of(src)
    new = grow(sd, src, dst)
    half = tile_from_middle(4, 6).tolist()  # inside each rotary half
    dims = half + [d + 4 for d in half]
    a, b = split_qkv(new["model.layers.1.attn.Wqkv.weight"], 4), split_qkv(sd["model.layers.1.attn.Wqkv.weight"], 4)
    hid = tile_from_middle(32, 48)
    for e in range(12):
        assert torch.equal(a[0, 2, e], b[0, 2, dims[e]][hid])
    assert all(dims[e + 6] == dims[e] + 4 for e in range(6))  # pair (e, e+hd/2) stays a pair
    runs(dst, new)


@pytest.mark.parametrize("head", ["none", "sequence-classification", "mlm"])
def test_transfer_other_heads_and_biases(head):
    """Bare encoders (no "model." prefix), classifiers, and every bias/norm-bias tensor."""
    flags = dict(attention_bias=True, mlp_bias=True, norm_bias=True, num_labels=3)
    src = SRC.replace(**flags)
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in to_hf_state_dict(build_model(src, head=head)).items()}
    for dst in (BIG.replace(**flags), SMALL.replace(**flags)):
        new, plan = transfer_state_dict(sd, src, dst)
        want = {k: v.shape for k, v in to_hf_state_dict(build_model(dst, head=head)).items()}
        assert {k: v.shape for k, v in new.items()} == want
        p = "" if head == "none" else "model."
        b_new, b_old = new[f"{p}layers.0.attn.Wqkv.bias"], sd[f"{p}layers.{plan.layers[0]}.attn.Wqkv.bias"]
        hd = src.head_dim
        h0 = int(plan.heads[0][0])  # first new head's q bias = its source head's q bias
        assert torch.equal(b_new[:dst.head_dim], b_old[h0 * hd:(h0 + 1) * hd][plan.head_dim])


# ----------------------------------------------------------------------------- shrink
@pytest.mark.parametrize("rule", ["magnitude", "strided"])
def test_shrink_keeps_whole_heads_and_aligned_glu_halves(rule):
    sd = state_of(SRC, seed=4)
    new, plan = transfer_state_dict(sd, SRC, SMALL, rule)
    want = {k: v.shape for k, v in to_hf_state_dict(build_model(SMALL)).items()}
    assert {k: v.shape for k, v in new.items()} == want
    runs(SMALL, new)
    assert plan.layers == [1]  # one layer kept: the last (it feeds the MLM head)
    hid = plan.hidden
    assert len(set(hid.tolist())) == SMALL.hidden_size and hid.tolist() == sorted(hid.tolist())
    if rule == "strided":
        assert hid.tolist() == list(range(0, 32, 2)) and plan.heads[0].tolist() == [0, 2]
    a, b = split_qkv(new["model.layers.0.attn.Wqkv.weight"], 2), split_qkv(sd["model.layers.1.attn.Wqkv.weight"], 4)
    hd = SRC.head_dim
    for h_new in range(2):
        # the whole head (q, k and v rows, and its Wo columns) comes from one source head
        matches = [h for h in range(4) if torch.equal(a[0, h_new], b[0, h][:, hid])]
        assert len(matches) == 1
        h = matches[0]
        assert torch.equal(a[1, h_new], b[1, h][:, hid]) and torch.equal(a[2, h_new], b[2, h][:, hid])
        assert torch.equal(new["model.layers.0.attn.Wo.weight"][:, h_new * hd:(h_new + 1) * hd],
                           sd["model.layers.1.attn.Wo.weight"][hid][:, h * hd:(h + 1) * hd])
    wi_new, wi_old = new["model.layers.0.mlp.Wi.weight"], sd["model.layers.1.mlp.Wi.weight"]
    for u in range(SMALL.intermediate_size):
        src_u = [v for v in range(24) if torch.equal(wi_new[u], wi_old[v][hid])]
        assert len(src_u) == 1  # input row u ...
        assert torch.equal(wi_new[10 + u], wi_old[24 + src_u[0]][hid])  # ... gate row u, same unit
        assert torch.equal(new["model.layers.0.mlp.Wo.weight"][:, u], sd["model.layers.1.mlp.Wo.weight"][hid, src_u[0]])


def test_magnitude_rule_keeps_the_heavy_units():
    sd = state_of(SRC, seed=5)
    sd = {k: 0.1 * v for k, v in sd.items()}
    H, hd = SRC.hidden_size, SRC.head_dim
    for l in (0, 1):
        p = f"model.layers.{l}."
        sd[p + "attn.Wqkv.weight"][2 * H + 3 * hd: 2 * H + 4 * hd] *= 50  # v rows of head 3
        sd[p + "attn.Wo.weight"][:, 3 * hd:4 * hd] *= 50
        sd[p + "mlp.Wi.weight"][[5, 24 + 5]] *= 50  # unit 5, input and gate
        sd[p + "mlp.Wo.weight"][:, 5] *= 50
    sd["model.embeddings.tok_embeddings.weight"][:, 7] *= 50
    _, plan = transfer_state_dict(sd, SRC, SMALL, "magnitude")
    assert 3 in plan.heads[0].tolist() and 5 in plan.intermediate[0].tolist() and 7 in plan.hidden.tolist()
    _, plan = transfer_state_dict(sd, SRC, SMALL, "strided")
    assert 3 not in plan.heads[0].tolist() and 7 not in plan.hidden.tolist()


def test_bad_transfers_refused():
    sd = state_of(SRC)
    with pytest.raises(TransferError, match="grow needs every target size"):
        grow(sd, SRC, SMALL)
    with pytest.raises(TransferError, match="shrink needs every target size"):
        shrink(sd, SRC, BIG)
    with pytest.raises(TransferError, match="keeps vocab_size"):
        shrink(sd, SRC, SMALL.replace(vocab_size=64))
    with pytest.raises(TransferError, match="unknown shrink rule"):
        shrink(sd, SRC, SMALL, rule="random")


# ----------------------------------------------------------------------------- directories, CLI
def test_init_from_directory_and_cli(tmp_path, capsys):
    torch.manual_seed(0)
    src_cfg = EncoderConfig.from_preset("tiny", vocab_size=64)
    save_pretrained(build_model(src_cfg), tmp_path / "src")
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "a", "b"])}
    tok_json = Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).to_str()
    (tmp_path / "src" / "tokenizer.json").write_text(tok_json)
    half = src_cfg.replace(hidden_size=64, num_attention_heads=2, intermediate_size=128,
                           num_hidden_layers=3)
    out = init_from(tmp_path / "src", tmp_path / "small", config=half, rule="strided")
    model = mmbert.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 3
    assert model.config.vocab_size == 64
    assert (out / "tokenizer.json").read_text() == tok_json
    rec = json.loads((out / "init_from.json").read_text())
    assert rec["rule"] == "strided" and rec["plan"]["layers"] == [0, 3, 5]
    with pytest.raises(FileExistsError, match="--overwrite"):
        init_from(tmp_path / "src", out, config=half)

    assert cli_main(["init-from", "--model", str(out), "--preset", "tiny",
                     "--out", str(tmp_path / "grown")]) == 0
    grown = mmbert.from_pretrained(tmp_path / "grown")
    assert grown.config.hidden_size == 128 and grown.config.num_hidden_layers == 6
    assert cli_main(["init-from", "--model", str(tmp_path / "nope"), "--preset", "tiny",
                     "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_shrunk_model_beats_random_init_after_equal_training():
    """The acceptance experiment, scaled down: benchmarks/shrink_transfer.py holds the full run."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "shrink_transfer.py"
    spec = importlib.util.spec_from_file_location("shrink_transfer", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, src_curve, rows = bench.run_experiment(source_steps=80, target_steps=24, hidden=32, layers=2,
                                              batch=8, seq=32, log=lambda m: None)
    assert src_curve[80] < src_curve[0] - 0.2  # the source learned something to transfer
    final = {(name, init): curve[24] for name, _, init, curve in rows}
    for name in {n for n, _ in final}:
        for rule in ("magnitude", "strided"):
            assert final[(name, f"shrink: {rule}")] < final[(name, "random")], (name, rule, final)
