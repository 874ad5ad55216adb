"""Number-for-number parity with transformers' ModernBERT on tiny random models (CPU).

Both directions: transformers → our loader → same outputs, and ours → save_pretrained → transformers.
fp32 comparisons use the derived tolerance of tests/parity_tol.py; the dialect test also checks
structure in float64 (≤ 1e-9), where rounding cannot hide a difference.
"""

import json

import pytest
import torch
import transformers
from transformers import (ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification,
                          ModernBertForTokenClassification, ModernBertModel)

import mmbert
from mmbert.export.hf import save_pretrained
from mmbert.model import EncoderConfig, build_model
from parity_tol import assert_fp32_close, assert_fp64_close, lift_transformers_fp32_rope


def hf_config(**kw):
    base = dict(vocab_size=211, hidden_size=32, intermediate_size=48, num_hidden_layers=5, num_attention_heads=4,
                local_attention=8, global_attn_every_n_layers=3, global_rope_theta=160000.0,
                local_rope_theta=10000.0, pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2,
                sep_token_id=1, max_position_embeddings=128, attn_implementation="eager")
    base.update(kw)
    return ModernBertConfig(**base)


def randomise(model, seed=0):
    """Random weights everywhere (norm weights too), so parity can't hide behind init values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] > 1 else 0))
    return model


def batch(vocab=211, lengths=(45, 40, 17, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0 at padding
    return ids, mask


def close_on_real(a, b, mask, config, seq_len=None):
    """fp32 parity on the real (non-padding) positions, derived tolerance (tests/parity_tol.py)."""
    m = mask.bool()
    seq_len = seq_len or mask.shape[1]
    assert_fp32_close(a[m], b[m], widest=max(config.hidden_size, config.intermediate_size, seq_len),
                      depth=config.num_hidden_layers + 2)


HF_CLASSES = {"mlm": ModernBertForMaskedLM, "none": ModernBertModel,
              "sequence-classification": ModernBertForSequenceClassification,
              "token-classification": ModernBertForTokenClassification}


def _out(o, head):
    return o.last_hidden_state if head == "none" else o.logits


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("backend", ["eager", "sdpa", "varlen"])
def test_hf_to_ours(tmp_path, head, backend):
    cfg = hf_config(num_labels=3, classifier_pooling="mean")
    hf = randomise(HF_CLASSES[head](cfg).eval())
    hf.save_pretrained(tmp_path)
    ours = mmbert.from_pretrained(tmp_path, head=head)
    ids, mask = batch()
    with torch.no_grad():
        ref = _out(hf(input_ids=ids, attention_mask=mask), head)
        got = _out(ours(ids, mask, backend=backend), head)
    if head == "sequence-classification":
        close_on_real(got[:, None], ref[:, None], mask[:, :1], cfg, seq_len=ids.shape[1])
    else:
        close_on_real(got, ref, mask, cfg)


@pytest.mark.parametrize("dialect", ["legacy", "rope_parameters"])
@pytest.mark.parametrize("every_n", [3, 2])
def test_config_dialects_and_global_every_n(tmp_path, dialect, every_n):
    cfg = hf_config(global_attn_every_n_layers=every_n, classifier_pooling="cls")
    hf = randomise(ModernBertForMaskedLM(cfg).eval(), seed=1)
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    if dialect == "legacy":  # rewrite into the pre-v5 dialect that older hub checkpoints use
        rp = d.pop("rope_parameters")
        d.pop("layer_types")
        d["global_rope_theta"] = rp["full_attention"]["rope_theta"]
        d["local_rope_theta"] = rp["sliding_attention"]["rope_theta"]
        d["global_attn_every_n_layers"] = every_n
    else:
        assert "layer_types" in d and "rope_parameters" in d
    (tmp_path / "config.json").write_text(json.dumps(d))
    ours = mmbert.from_pretrained(tmp_path)
    assert ours.config.global_attn_every_n_layers == every_n
    assert ours.config.global_rope_theta == 160000.0 and ours.config.local_rope_theta == 10000.0
    ids, mask = batch(seed=2)
    with torch.no_grad():
        close_on_real(ours(ids, mask).logits, hf(input_ids=ids, attention_mask=mask).logits, mask, cfg)


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_float64_structural_parity(tmp_path, monkeypatch, backend):
    """Both models in float64 (transformers' fp32-pinned RoPE lifted, sdpa attention since its eager
    softmax is fp32 too): equal to 1e-9, so the fp32 tolerance above cannot be hiding a difference."""
    lift_transformers_fp32_rope(monkeypatch)
    cfg = hf_config(global_attn_every_n_layers=2, global_rope_theta=5000.0, local_rope_theta=777.0,
                    attn_implementation="sdpa")
    hf = randomise(ModernBertForMaskedLM(cfg).eval(), seed=1)
    hf.save_pretrained(tmp_path)
    ours = mmbert.from_pretrained(tmp_path).double()
    hf = hf.double()
    ids, mask = batch(seed=2)
    with torch.no_grad():
        got, ref = ours(ids, mask, backend=backend).logits, hf(input_ids=ids, attention_mask=mask).logits
    m = mask.bool()
    assert_fp64_close(got[m], ref[m])


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_ours_to_hf(tmp_path, head):
    cfg = EncoderConfig(vocab_size=211, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                        num_attention_heads=2, local_attention=8, global_attn_every_n_layers=3,
                        global_rope_theta=160000.0, local_rope_theta=10000.0, max_position_embeddings=128,
                        num_labels=3, classifier_pooling="mean")
    ours = randomise(build_model(cfg, head).eval(), seed=3)
    save_pretrained(ours, tmp_path)
    hf = HF_CLASSES[head].from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = batch(seed=4)
    with torch.no_grad():
        ref, got = _out(hf(input_ids=ids, attention_mask=mask), head), _out(ours(ids, mask), head)
    if head == "sequence-classification":
        close_on_real(got[:, None], ref[:, None], mask[:, :1], cfg, seq_len=ids.shape[1])
    else:
        close_on_real(got, ref, mask, cfg)


def test_automodel_loads_our_export_with_identical_logits(tmp_path):
    cfg = EncoderConfig.from_preset("tiny", vocab_size=300, num_hidden_layers=3)
    ours = build_model(cfg).eval()
    save_pretrained(ours, tmp_path)
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = batch(vocab=300, lengths=(80, 70, 3))
    with torch.no_grad():
        close_on_real(ours(ids, mask).logits, hf(input_ids=ids, attention_mask=mask).logits, mask, cfg)
    # tied decoder survives the round trip
    assert hf.decoder.weight.data_ptr() == hf.model.embeddings.tok_embeddings.weight.data_ptr()


def test_mlm_loss_matches_transformers(tmp_path):
    cfg = hf_config()
    hf = randomise(ModernBertForMaskedLM(cfg).eval(), seed=5)
    hf.save_pretrained(tmp_path)
    ours = mmbert.from_pretrained(tmp_path)
    ids, mask = batch(seed=6)
    labels = torch.full_like(ids, -100)
    sel = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3) & mask.bool()
    labels[sel] = ids[sel]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        out = ours(ids, mask, labels=labels)
    # the loss is a mean of log-softmaxes of logits: the logits' derived tolerance bounds its error
    close_on_real(out.loss.reshape(1, 1), ref.reshape(1, 1), mask[:1, :1], cfg, seq_len=ids.shape[1])
    assert out.num_labelled == int(sel.sum()) and out.logits.shape == (int(sel.sum()), 211)
