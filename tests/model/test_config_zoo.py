"""The config zoo: transformers itself is the oracle for every ModernBERT setting we read or write.

For each case a tiny `ModernBertForMaskedLM` is built by transformers with random weights (norm gains
and biases too, so every norm and both RoPE tables matter), saved by transformers (its ≥ 5 dialect:
rope_parameters per layer type, layer_types), read by `mmbert.from_pretrained` and compared:
fp32 with the derived tolerance (tests/parity_tol.py), fp64 to 1e-9 (structure). The same file
rewritten in the legacy dialect must resolve to the same config. Then our export goes back into
transformers and must give the original logits. Settings we do not compute are refused by name.
The same files go through `init-from` (identity-shaped transfer) and `merge`.
"""

from __future__ import annotations

import json
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import ModernBertConfig, ModernBertForMaskedLM

import mmbert
import mmbert.inference
from mmbert.export.hf import read_config, save_pretrained
from mmbert.model.config import ACTIVATIONS, ConfigError, EncoderConfig
from mmbert.model.encoder import ACTIVATION_FNS
from parity_tol import assert_fp32_close, assert_fp64_close, fp32_atol, lift_transformers_fp32_rope

V = 211
BASE = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            local_attention=8, global_attn_every_n_layers=3, global_rope_theta=20000.0, local_rope_theta=3000.0,
            pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1,
            max_position_embeddings=256)
BERT_IDS = dict(pad_token_id=3, unk_token_id=5, cls_token_id=6, bos_token_id=6, sep_token_id=7, eos_token_id=7)
MASK_ID = V - 1  # a BERT/ModernBERT-style vocabulary with [MASK] at the end
SHORT, LONG = (45, 40, 17, 1), (150, 100, 17, 1)

ZOO = {  # name: (transformers config changes, batch lengths)
    "theta-5000-777": (dict(global_rope_theta=5000.0, local_rope_theta=777.0), SHORT),
    "theta-160k-160k": (dict(global_rope_theta=160000.0, local_rope_theta=160000.0), SHORT),
    "theta-10k-10k": (dict(global_rope_theta=10000.0, local_rope_theta=10000.0), SHORT),
    "window-6": (dict(local_attention=6), SHORT),
    "window-32-every-2": (dict(local_attention=32, global_attn_every_n_layers=2), LONG),
    "window-128": (dict(local_attention=128, num_hidden_layers=2, global_attn_every_n_layers=2), LONG),
    "every-1": (dict(global_attn_every_n_layers=1), SHORT),
    "every-3-of-5": (dict(global_attn_every_n_layers=3, num_hidden_layers=5), SHORT),
    "all-biases": (dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True), SHORT),
    "no-decoder-bias": (dict(decoder_bias=False, norm_eps=1e-6), SHORT),
    "silu-head": (dict(classifier_activation="silu"), SHORT),
    "relu-mlp-tanh-gelu-head": (dict(hidden_activation="relu", classifier_activation="gelu_pytorch_tanh"), SHORT),
    "untied-decoder": (dict(tie_word_embeddings=False), SHORT),
    "bert-ids-no-mask-id": (BERT_IDS, SHORT),
}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread beats several (no fork/join per op; 10x on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomise(model, seed):
    """Random weights everywhere; 1-D tensors (norm gains) around 1 so the norms matter but stay sane."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] > 1 else 0))
    return model


def make_batch(lengths, pad_id, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(8, V - 1, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))  # padded rows carry the pad id
    return ids, mask


def hf_model(changes, seed, attn="eager"):
    cfg = ModernBertConfig(**{**BASE, **changes}, attn_implementation=attn)
    return randomise(ModernBertForMaskedLM(cfg).eval(), seed), cfg


def fp32_close(got, ref, mask, cfg):
    m = mask.bool()
    widest = max(cfg.hidden_size, cfg.intermediate_size, mask.shape[1])
    assert_fp32_close(got[m], ref[m], widest=widest, depth=cfg.num_hidden_layers + 2)


def to_legacy(d: dict) -> dict:
    """The same config in the pre-v5 dialect older hub checkpoints use."""
    d = dict(d)
    rp = d.pop("rope_parameters")
    lt = d.pop("layer_types")
    d["global_rope_theta"] = rp["full_attention"]["rope_theta"]
    d["local_rope_theta"] = rp["sliding_attention"]["rope_theta"]
    glob = [i for i, t in enumerate(lt) if t == "full_attention"]
    d["global_attn_every_n_layers"] = glob[1] if len(glob) > 1 else len(lt)
    return d


@pytest.mark.parametrize("case", list(ZOO))
def test_zoo_transformers_to_ours_and_back(tmp_path, monkeypatch, case):
    changes, lengths = ZOO[case]
    hf, cfg = hf_model(changes, seed=len(case))
    hf.save_pretrained(tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" in written and "layer_types" in written and "mask_token_id" not in written

    ours = mmbert.from_pretrained(tmp_path / "hf")
    ids, mask = make_batch(lengths, cfg.pad_token_id)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        fp32_close(ours(ids, mask).logits, ref, mask, cfg)

    # the legacy dialect of the same file resolves to the same config
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text(json.dumps(to_legacy(written)))
    assert read_config(tmp_path / "legacy") == ours.config

    # export → transformers: same config as transformers resolves it, same logits
    save_pretrained(ours, tmp_path / "ours")
    exported = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert "reference_compile" not in exported
    back = ModernBertForMaskedLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    for f in ("rope_parameters", "layer_types", "local_attention", "hidden_activation", "classifier_activation",
              "tie_word_embeddings", "norm_bias", "norm_eps", "decoder_bias", "pad_token_id", "cls_token_id"):
        assert getattr(back.config, f) == getattr(hf.config, f), f
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as h:
        assert ("decoder.weight" in h.keys()) == (not cfg.tie_word_embeddings)
    if not cfg.tie_word_embeddings:
        assert back.decoder.weight.data_ptr() != back.model.embeddings.tok_embeddings.weight.data_ptr()
        torch.testing.assert_close(back.decoder.weight, hf.decoder.weight, atol=0, rtol=0)  # exact: a copy
    with torch.no_grad():
        fp32_close(back(input_ids=ids, attention_mask=mask).logits, ref, mask, cfg)

    # structure in float64: transformers' fp32-pinned RoPE lifted, sdpa (its eager softmax is fp32)
    lift_transformers_fp32_rope(monkeypatch)
    hf64 = ModernBertForMaskedLM.from_pretrained(tmp_path / "hf", attn_implementation="sdpa").double().eval()
    with torch.no_grad():
        got64, ref64 = ours.double()(ids, mask).logits, hf64(input_ids=ids, attention_mask=mask).logits
    m = mask.bool()
    assert_fp64_close(got64[m], ref64[m], msg=case)


def test_activation_names_match_the_encoder_and_transformers():
    from transformers.activations import ACT2FN

    assert set(ACTIVATIONS) == set(ACTIVATION_FNS) and set(ACTIVATIONS) <= set(ACT2FN)
    x = torch.linspace(-6, 6, 97, dtype=torch.float64)
    for name in ACTIVATIONS:  # the same formula as transformers' (float64: only rounding may differ)
        # |x| ≤ 6, a handful of ops: rounding ≲ 10·eps64·6 ≈ 1e-14; a different formula is ≳ 1e-4 off
        torch.testing.assert_close(ACTIVATION_FNS[name](x), ACT2FN[name](x), atol=1e-12, rtol=0, msg=name)


# ----------------------------------------------------------------------------- refusals
def _saved_config() -> dict:
    return json.loads(ModernBertConfig(**BASE).to_json_string())


def _set(path, value):
    def edit(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return None
    return edit


REFUSED = {  # name: (edit of a transformers-written config.json, words the error must contain)
    "yarn": (_set("rope_parameters.full_attention", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
             ["rope_parameters.full_attention.rope_type", "yarn"]),
    "linear-scaling-legacy": (_set("rope_scaling", {"rope_type": "linear", "factor": 2.0}), ["rope_scaling", "linear"]),
    "flat-rope-parameters": (_set("rope_parameters", {"rope_type": "default", "rope_theta": 5000.0}),
                             ["rope_parameters", "full_attention"]),
    "irregular-layer-types": (_set("layer_types", ["full_attention", "full_attention", "sliding_attention",
                                                   "full_attention"]), ["layer_types", "irregular"]),
    "layer-types-length": (_set("layer_types", ["full_attention", "sliding_attention"]), ["layer_types", "2"]),
    "prelu-mlp": (_set("hidden_activation", "prelu"), ["hidden_activation", "prelu"]),
    "xielu-head": (_set("classifier_activation", "xielu"), ["classifier_activation", "xielu"]),
    "norm-eps-list": (_set("norm_eps", [1e-5]), ["norm_eps must be a number, got list"]),
    "bool-as-string": (_set("tie_word_embeddings", "false"), ["tie_word_embeddings must be true or false, got string"]),
    "bool-as-int": (_set("norm_bias", 0), ["norm_bias must be true or false, got number"]),
    "layers-as-bool": (_set("num_hidden_layers", True), ["num_hidden_layers must be an integer, got boolean"]),
    "hidden-as-float": (_set("hidden_size", 32.5), ["hidden_size must be an integer, got number"]),
    "id2label-list": (_set("id2label", ["a", "b"]), ["id2label must be an object"]),
    "theta-string": (_set("rope_parameters.sliding_attention.rope_theta", "1e4"),
                     ["rope_parameters.sliding_attention.rope_theta must be a number"]),
    "head-dim": (_set("head_dim", 16), ["head_dim", "16"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_or_mistyped_settings_are_refused_by_name(tmp_path, case):
    edit, words = REFUSED[case]
    d = _saved_config()
    edit(d)
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError) as e:
        mmbert.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "config.json" in msg and all(w in msg for w in words), msg
    assert "\n" not in msg


def test_top_level_list_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        read_config(tmp_path)
    with pytest.raises(ConfigError, match="JSON object, got list"):
        EncoderConfig.load_json(tmp_path / "config.json")


def test_cli_refusal_is_one_error_line(tmp_path, capsys):
    from mmbert.cli import main

    d = _saved_config()
    d["rope_parameters"]["sliding_attention"]["rope_type"] = "dynamic"
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert main(["fill-mask", "--model", str(tmp_path), "a <mask>"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rope_parameters.sliding_attention.rope_type" in errors[0], err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- special ids from the tokenizer
def bert_style_tokenizer(path):
    """WordLevel tokens w0…, [PAD] 3, [UNK] 5, [CLS] 6, [SEP] 7 and [MASK] at the end of the vocabulary."""
    special = {3: "[PAD]", 5: "[UNK]", 6: "[CLS]", 7: "[SEP]", MASK_ID: "[MASK]"}
    vocab = {special.get(i, f"w{i}"): i for i in range(V)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(special.values()))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 6),
                                                                                              ("[SEP]", 7)])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]"}))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert-ids")
    hf, _ = hf_model(BERT_IDS, seed=7)
    hf.save_pretrained(path)
    bert_style_tokenizer(path)
    return path, hf


def test_fill_mask_takes_the_mask_id_from_the_tokenizer(bert_dir):
    path, hf = bert_dir
    assert "mask_token_id" not in json.loads((path / "config.json").read_text())
    text = "w10 w11 [MASK] w12 w13"
    out = mmbert.inference.fill_mask(str(path), [text], top_k=3, dtype="fp32")
    ids = torch.tensor([[6, 10, 11, MASK_ID, 12, 13, 7]])
    with torch.no_grad():
        logits = hf(input_ids=ids).logits
    probs = logits[0, 3].softmax(-1)
    top = probs.topk(3)
    assert [c["token_id"] for c in out[0][0]] == top.indices.tolist()
    # softmax moves a probability by ≤ 2·max|Δlogit|: twice the derived fp32 logit bound (parity_tol)
    cfg = hf.config
    tol = 2 * fp32_atol(logits, widest=max(cfg.hidden_size, cfg.intermediate_size), depth=cfg.num_hidden_layers + 2)
    torch.testing.assert_close(torch.tensor([c["score"] for c in out[0][0]]), top.values, atol=tol, rtol=0)


def test_cli_fill_mask_on_a_transformers_directory_without_mask_token_id(bert_dir, capsys):
    from mmbert.cli import main

    path, _ = bert_dir
    assert main(["fill-mask", "--model", str(path), "--dtype", "fp32", "--top-k", "2", "w10 [MASK] w12"]) == 0
    out = capsys.readouterr().out
    assert "w10 [MASK] w12" in out and "mask 0: w" in out, out


def test_no_mask_token_anywhere_is_one_clear_error(bert_dir):
    path, _ = bert_dir
    model = mmbert.from_pretrained(path)
    model.tokenizer = None
    with pytest.raises(ValueError, match="no mask token: the model config has no mask_token_id"):
        mmbert.inference.fill_mask(model, [[6, 10, MASK_ID, 7]])


def test_mlm_eval_masks_with_the_tokenizers_mask(bert_dir, tmp_path):
    from synthetic import write_random_shards

    from mmbert.eval.mlm import evaluate_mlm

    path, _ = bert_dir
    model = mmbert.from_pretrained(path)
    write_random_shards(tmp_path, {"xx_Latn": (3, 40)}, vocab_size=V - 1, heldout_docs=3, first_id=8)
    kw = dict(max_tokens_per_lang=120, seq_len=32, tiers=[("all", "all")])
    auto = evaluate_mlm(model, tmp_path, **kw)["macro"]
    given = evaluate_mlm(model, tmp_path, mask_id=MASK_ID, **kw)["macro"]
    wrong = evaluate_mlm(model, tmp_path, mask_id=4, **kw)["macro"]  # the old silent default
    assert auto == given and auto != wrong


# ----------------------------------------------------------------------------- init-from and merge
@pytest.mark.parametrize("case", ["theta-5000-777", "window-32-every-2", "untied-decoder", "silu-head"])
def test_zoo_through_init_from_and_merge(tmp_path, case):
    from mmbert.init_from import init_from
    from mmbert.merge import merge

    changes, lengths = ZOO[case]
    hf, cfg = hf_model(changes, seed=11)
    hf.save_pretrained(tmp_path / "hf")
    ids, mask = make_batch(lengths, cfg.pad_token_id, seed=1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits

    def check(path):
        back = ModernBertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
        assert back.config.rope_parameters == hf.config.rope_parameters
        assert back.config.layer_types == hf.config.layer_types
        with torch.no_grad():
            fp32_close(back(input_ids=ids, attention_mask=mask).logits, ref, mask, cfg)

    # an identity-shaped transfer is a copy: transformers must read back the same model
    src = read_config(tmp_path / "hf")
    init_from(tmp_path / "hf", tmp_path / "init", config=src)
    check(tmp_path / "init")
    # a model merged with its own re-save (other dialect) is itself
    save_pretrained(mmbert.from_pretrained(tmp_path / "hf"), tmp_path / "resaved")
    merge([tmp_path / "hf", tmp_path / "resaved"], tmp_path / "merged", method="linear", progress=False)
    check(tmp_path / "merged")


def test_merge_refuses_models_whose_resolved_theta_differs(tmp_path):
    from mmbert.merge import MergeError, merge

    for name, theta in (("a", 160000.0), ("b", 10000.0)):
        hf, _ = hf_model(dict(global_rope_theta=theta, local_rope_theta=theta), seed=3)
        hf.save_pretrained(tmp_path / name)
    with pytest.raises(MergeError, match="rope_theta"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out", method="linear", progress=False)
