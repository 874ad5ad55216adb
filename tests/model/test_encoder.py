"""Encoder properties: parameter counts, backend equivalence, packed = padded, bad input."""

import pytest
import torch

import mmbert
from mmbert.export.hf import save_pretrained
from mmbert.model import ConfigError, EncoderConfig, build_model
from mmbert.model.attention import _bucket_length
from parity_tol import assert_fp32_close

# tiny(): hidden 128, intermediate 256, 4 layers → widest reduction 256, depth 6 (tests/parity_tol.py)
WIDEST, DEPTH = 256, 6


# tol: the published counts are rounded to 0.1M (mmBERT paper) or to 1M (ModernBERT's "149M"/"395M"),
# so the formula must land within that rounding; the counts are exact integers on our side
@pytest.mark.parametrize("preset,total,non_emb,tol", [
    ("mmbert-small", 140.9e6, 42.2e6, 0.1e6),
    ("mmbert-base", 307.8e6, 110.3e6, 0.1e6),
    ("modernbert-base", 149e6, None, 1e6),
    ("modernbert-large", 395e6, None, 1e6),
])
def test_preset_parameter_counts(preset, total, non_emb, tol):
    cfg = EncoderConfig.from_preset(preset)
    assert abs(cfg.num_parameters() - total) < tol
    if non_emb is not None:  # the paper's "non-embedding" count: the bare encoder without embeddings
        assert abs(cfg.num_parameters(include_embeddings=False, head="none") - non_emb) < tol


def test_formula_matches_built_model():
    cfg = EncoderConfig.from_preset("tiny")
    for head in ("mlm", "none"):
        assert build_model(cfg, head).num_parameters() == cfg.num_parameters(head=head)
    untied = cfg.replace(tie_word_embeddings=False)
    model = build_model(untied)
    assert model.num_parameters() == untied.num_parameters() == cfg.num_parameters() + cfg.vocab_size * 128
    assert model.decoder.weight.data_ptr() != model.model.embeddings.tok_embeddings.weight.data_ptr()
    assert 2e6 < cfg.num_parameters() < 10e6  # "a few million"


def test_invalid_configs_have_clear_messages():
    with pytest.raises(ConfigError, match="not divisible by num_attention_heads"):
        EncoderConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        EncoderConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="local_attention"):
        EncoderConfig(local_attention=7)
    with pytest.raises(ConfigError, match="norm_eps must be a number, got list"):
        EncoderConfig(norm_eps=[1e-5])
    with pytest.raises(ConfigError, match="norm_bias must be true or false, got number"):
        EncoderConfig(norm_bias=1)
    with pytest.raises(ConfigError, match="classifier_activation 'swiglu' is not an activation"):
        EncoderConfig(classifier_activation="swiglu")
    with pytest.raises(ConfigError, match="mask_token_id"):
        EncoderConfig(vocab_size=4, pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2,
                      sep_token_id=1, unk_token_id=3, mask_token_id=4)


def tiny(**kw):
    cfg = EncoderConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=4, local_attention=16, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_packed_equals_padded_per_document():
    """The same documents packed into one row give the same per-token outputs as a padded batch."""
    model = tiny()
    g = torch.Generator().manual_seed(0)
    lengths = [37, 5, 64, 1, 20]
    docs = [torch.randint(5, 500, (n,), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(docs), T, dtype=torch.long)
    mask = torch.zeros(len(docs), T, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, :len(d)], mask[i, :len(d)] = d, 1
    flat = torch.cat(docs)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    with torch.no_grad():
        ref = model(ids, mask, backend="eager").logits[mask.bool()]
        packed = model(flat, cu_seqlens=cu).logits
    assert_fp32_close(packed, ref, widest=WIDEST, depth=DEPTH)


def test_no_attention_across_documents():
    """Changing one document must not change another document's outputs in the same packed row."""
    model = tiny()
    a, b = torch.randint(5, 500, (30,)), torch.randint(5, 500, (30,))
    cu = torch.tensor([0, 30, 60], dtype=torch.int32)
    with torch.no_grad():
        out1 = model(torch.cat([a, b]), cu_seqlens=cu).logits
        out2 = model(torch.cat([a, torch.randint(5, 500, (30,))]), cu_seqlens=cu).logits
    assert_fp32_close(out1[:30], out2[:30], widest=WIDEST, depth=DEPTH)
    assert not torch.allclose(out1[30:], out2[30:])  # the changed document moves by O(1) ≫ allclose's 1e-5


def test_sliding_window_limits_receptive_field_per_layer():
    """In a one-layer local model, token i only sees |i - j| <= local_attention // 2."""
    cfg = EncoderConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=2, global_attn_every_n_layers=5,
                                    local_attention=8)
    model = build_model(cfg, head="none").eval()
    model.layers = model.layers[1:]  # keep only the local layer (layer index 1)
    x = torch.randint(5, 500, (1, 40))
    y = x.clone()
    y[0, 20] = (y[0, 20] + 1) % 495 + 5
    for backend in ("eager", "sdpa", "varlen"):
        with torch.no_grad():
            d = (model(x, backend=backend).last_hidden_state - model(y, backend=backend).last_hidden_state)
        # outside the window: bitwise unchanged (masked keys are exact zeros); inside: moves by O(0.1)
        changed = (d.abs().amax(-1)[0] > 1e-6).nonzero().squeeze(1).tolist()
        assert changed == list(range(16, 25)), backend


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_backends_match_eager_with_grad(backend):
    model = tiny().train()
    torch.manual_seed(1)
    ids = torch.randint(5, 500, (3, 50))
    mask = torch.ones_like(ids)
    mask[1, 33:] = 0
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, -100) * mask + (mask - 1) * 100
    grads = {}
    for b in ("eager", backend):
        model.zero_grad()
        out = model(ids, mask, labels=labels, backend=b)
        out.loss.backward()
        grads[b] = (out.loss.detach(), model.model.layers[1].attn.Wqkv.weight.grad.clone())
    # backward retraces the forward: twice the depth through which rounding accumulates
    assert_fp32_close(grads[backend][0], grads["eager"][0], widest=WIDEST, depth=DEPTH)
    assert_fp32_close(grads[backend][1], grads["eager"][1], widest=WIDEST, depth=2 * DEPTH)


def test_rope_theta_switch_changes_outputs_and_config():
    model = tiny()
    built_from = model.config
    theta = (built_from.global_rope_theta, built_from.local_rope_theta)
    x = torch.randint(5, 500, (1, 60))
    with torch.no_grad():
        a = model(x).logits
        model.set_rope_theta(10000.0, 10000.0)
        b = model(x).logits
    assert model.config.global_rope_theta == 10000.0 and model.model.config is model.config
    # the config the model was built from is left as it was (a caller may build another model from it)
    assert (built_from.global_rope_theta, built_from.local_rope_theta) == theta != (10000.0, 10000.0)
    assert not torch.allclose(a, b)  # another θ rotates q/k differently: logits move by O(0.1) ≫ 1e-5
    # a model built with θ in its config computes what the switched one does (same tables)
    fresh = build_model(model.config, head="mlm", init=False)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x).logits, b)


def test_bucket_lengths_bound_waste():
    for n in range(1, 9000, 7):
        L = _bucket_length(n)
        assert L >= n and (n <= 64 or L <= 1.25 * n)


def test_bad_weights_give_clear_errors(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path / "ok")
    # no weights
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights found"):
        mmbert.from_pretrained(tmp_path / "empty")
    # no config
    with pytest.raises(FileNotFoundError, match="no config.json"):
        mmbert.from_pretrained(tmp_path)
    # truncated safetensors
    bad = tmp_path / "trunc"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    data = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        mmbert.from_pretrained(bad)


def test_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file
    model = tiny()
    save_pretrained(model, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd.pop("model.layers.1.mlp.Wi.weight")
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing encoder weights.*layers.1.mlp.Wi.weight"):
        mmbert.from_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.1.mlp.Wi.weight"] = torch.zeros(512, 128)
    sd["model.layers.0.attn.Wk.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected weights.*Wk"):
        mmbert.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_pretrained(tiny(), tmp_path)
    import json
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mlp.Wi.weight has shape"):
        mmbert.from_pretrained(tmp_path)


def test_mlm_checkpoint_loads_as_classifier_with_fresh_classifier(tmp_path):
    save_pretrained(tiny(), tmp_path)
    with pytest.warns(UserWarning, match="classifier"):
        clf = mmbert.from_pretrained(tmp_path, head="sequence-classification", num_labels=5)
    out = clf(torch.randint(5, 500, (2, 10)))
    assert out.logits.shape == (2, 5)
    bare = mmbert.from_pretrained(tmp_path, head="none")
    assert bare(torch.randint(5, 500, (2, 10))).last_hidden_state.shape == (2, 10, 128)


def test_unknown_backend_and_head():
    model = tiny()
    with pytest.raises(ValueError, match="unknown attention backend"):
        model(torch.randint(5, 500, (1, 8)), backend="magic")
    with pytest.raises(ValueError, match="unknown head"):
        build_model(EncoderConfig.from_preset("tiny"), head="qa")
