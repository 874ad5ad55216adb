"""mmbert.inference: packed, length-sorted embed/fill_mask against the padded eager reference."""

import random
import warnings

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from mmbert import EncoderConfig
from mmbert.export.hf import save_pretrained
from mmbert.inference import embed, fill_mask, plan_batches, prepare, resolve_dtype
from mmbert.model import build_model
from parity_tol import fp32_atol

# local window 16 → |i−j| ≤ 8, so lengths 40 and 70 exercise the band; 3 layers: global, local, local
CFG = EncoderConfig.from_preset("tiny", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=2, local_attention=16, max_position_embeddings=128)
LENGTHS = [40, 1, 7, 70, 16, 3, 33, 9, 17, 64]
# packed vs padded / ours vs transformers in fp32 differ by rounding only: the derived bound of
# tests/parity_tol.py; widest reduction ≤ 128 (documents ≤ max_position_embeddings, ≥ intermediate 48);
# depth 3 layers + 2
WIDEST, DEPTH = 128, 5


def close(got, want, like=None):
    """Within the derived fp32 bound, scaled by `like` (the token states a pooled value comes from) or `want`."""
    atol = fp32_atol(want if like is None else like, widest=WIDEST, depth=DEPTH)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG, head="mlm").eval()


def _docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, CFG.vocab_size, (n,), generator=g).tolist() for n in lengths]


def _reference(model, docs):
    """Padded batch through the eager backend (the oracle), per-document hidden states."""
    T = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), T, dtype=torch.long)
    mask = torch.zeros(len(docs), T, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, :len(d)] = torch.tensor(d)
        mask[i, :len(d)] = 1
    with torch.no_grad():
        h = model.model(ids, mask, backend="eager").last_hidden_state
    return [h[i, :len(d)] for i, d in enumerate(docs)]


@pytest.mark.parametrize("order_seed", [0, 1])
def test_encode_equals_padded_eager_reference(model, order_seed):
    lengths = LENGTHS[:]
    random.Random(order_seed).shuffle(lengths)
    docs = _docs(lengths, order_seed)
    ref = _reference(model, docs)
    # a small token budget forces several batches, so sorting and un-sorting both matter
    out = embed(model, docs, pooling="none", dtype="fp32", batch_tokens=64)
    assert len(out) == len(docs)
    for o, r in zip(out, ref):
        close(o, r)
    mean = embed(model, docs, pooling="mean", dtype="fp32", batch_tokens=100)
    first = embed(model, docs, pooling="first", dtype="fp32")
    close(mean, torch.stack([r.mean(0) for r in ref]), like=torch.cat(ref))  # a mean's error ≤ its rows' largest
    close(first, torch.stack([r[0] for r in ref]), like=torch.cat(ref))


def test_any_model_class_and_tensor_inputs(model):
    docs = _docs([5, 12])
    enc_only = build_model(CFG, head="none").eval()
    enc_only.load_state_dict(model.model.state_dict())
    a = embed(model, docs, dtype="fp32")
    b = embed(enc_only, [torch.tensor(d) for d in docs], dtype="fp32")
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # exact: the same weights through the same ops


def test_empty_input_gives_empty_output(model):
    assert embed(model, [], dtype="fp32", pooling="none") == []
    out = embed(model, [], dtype="fp32")
    assert out.shape == (0, CFG.hidden_size)


def test_overlong_input_is_truncated_with_warning_or_rejected(model):
    docs = _docs([20, 150, 9])  # 150 > max_position_embeddings = 128
    with pytest.warns(UserWarning, match="truncated"):
        out = embed(model, docs, pooling="none", dtype="fp32")
    assert out[1].shape[0] == 128
    close(out[1], _reference(model, [docs[1][:128]])[0])
    with pytest.warns(UserWarning):
        short = embed(model, docs, pooling="none", dtype="fp32", max_length=10)
    assert [o.shape[0] for o in short] == [10, 10, 9]
    with pytest.raises(ValueError, match="input 1 has 150 tokens.*max_length=128"):
        embed(model, docs, dtype="fp32", truncate="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to truncate: no warning
        embed(model, docs[:1], dtype="fp32")


def test_truncation_keeps_the_closing_separator(model):
    doc = [CFG.cls_token_id] + _docs([200])[0] + [CFG.sep_token_id]
    with pytest.warns(UserWarning):
        out = embed(model, [doc], pooling="none", dtype="fp32", max_length=30)
    ref = _reference(model, [doc[:29] + [CFG.sep_token_id]])[0]
    close(out[0], ref)


def test_bad_arguments_have_clear_errors(model):
    with pytest.raises(ValueError, match="pooling"):
        embed(model, [[5]], pooling="max")
    with pytest.raises(ValueError, match="tokenizer"):
        embed(model, ["text without a tokenizer"])
    with pytest.raises(ValueError, match="no tokens"):
        embed(model, [[5], []])
    with pytest.raises(ValueError, match="dtype"):
        embed(model, [[5]], dtype="fp8")
    with pytest.raises(ValueError, match="list"):
        embed(model, "a single string")


def test_bf16_is_close_and_leaves_the_callers_model_alone(model):
    docs = _docs([30, 5, 70])
    ref = embed(model, docs, dtype="fp32")
    out = embed(model, docs, dtype="bf16")
    assert next(model.parameters()).dtype == torch.float32
    # bf16 keeps 8 mantissa bits: ~1% per vector, 1 - cos ≈ 1e-4; a wrong computation is far below 0.99
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.99


def test_prepared_copy_follows_weight_updates(model):
    m = build_model(CFG, head="none").eval()
    a = prepare(m, torch.bfloat16)
    assert prepare(m, torch.bfloat16) is a  # cached
    with torch.no_grad():
        m.final_norm.weight.mul_(2.0)
    b = prepare(m, torch.bfloat16)
    assert b is not a
    # exact: the cached copy is the bf16 rounding of the updated weights
    torch.testing.assert_close(b.final_norm.weight, m.final_norm.weight.bfloat16(), atol=0, rtol=0)


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 300, 17, 64, 64, 1, 120]
    batches = plan_batches(lengths, 128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 128
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)


def _word_tokenizer():
    vocab = {"[PAD]": 0, "[SEP]": 1, "[CLS]": 2, "[UNK]": 3, "[MASK]": 4}
    for w in "the cat sat on a mat dog ran far away big small red".split():
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                  ("[SEP]", 1)])
    return tok


def test_texts_and_fill_mask_match_the_reference(model):
    tok = _word_tokenizer()
    texts = ["the cat sat on the [MASK]", "a [MASK] dog ran far [MASK]", "[MASK]"]
    ids = [e.ids for e in tok.encode_batch(texts)]
    # exact: the same ids through the same ops
    torch.testing.assert_close(embed(model, texts, tok, dtype="fp32"), embed(model, ids, dtype="fp32"),
                               atol=0, rtol=0)

    res = fill_mask(model, texts, tok, top_k=3, dtype="fp32")
    assert [len(r) for r in res] == [1, 2, 1]  # one entry per mask token
    for text_ids, per_text in zip(ids, res):
        with torch.no_grad():
            logits = model(torch.tensor([text_ids]), backend="eager").logits[0]
        probs = logits.softmax(-1)
        positions = [i for i, t in enumerate(text_ids) if t == CFG.mask_token_id]
        for pos, cands in zip(positions, per_text):
            top = probs[pos].topk(3)
            assert [c["token_id"] for c in cands] == top.indices.tolist()
            # softmax moves a probability by ≤ 2·max|Δlogit|: twice the derived bound of the logits
            torch.testing.assert_close(torch.tensor([c["score"] for c in cands]), top.values,
                                       atol=2 * fp32_atol(logits, widest=WIDEST, depth=DEPTH), rtol=0)
            assert cands[0]["token"] == tok.id_to_token(cands[0]["token_id"])
    with pytest.raises(ValueError, match="no mask token"):
        fill_mask(model, ["the cat"], tok)
    with pytest.raises(ValueError, match="masked-LM"):
        fill_mask(build_model(CFG, head="none"), texts, tok)


def test_model_directories_ours_and_transformers(model, tmp_path):
    """embed takes a path: our checkpoint, and a transformers ModernBERT directory."""
    import transformers

    docs = _docs([12, 40, 1])
    save_pretrained(model, tmp_path / "ours")
    # exact: safetensors round-trips fp32 weights bit for bit, then the same ops run
    torch.testing.assert_close(embed(str(tmp_path / "ours"), docs, dtype="fp32"), embed(model, docs, dtype="fp32"),
                               atol=0, rtol=0)

    hcfg = transformers.ModernBertConfig(**{k: v for k, v in CFG.to_hf_dict().items()
                                            if k not in ("architectures", "model_type", "transformers_version")})
    torch.manual_seed(3)
    hf = transformers.ModernBertModel(hcfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = embed(str(tmp_path / "hf"), docs, pooling="none", dtype="fp32")
    for d, o in zip(docs, ours):
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor([d])).last_hidden_state[0]
        close(o, ref)


def test_cli_embed_and_fill_mask(tmp_path, capsys):
    import numpy as np

    from mmbert.cli import main
    from mmbert.tokenizer import train_tokenizer_from_texts

    tok = train_tokenizer_from_texts(["the cat sat on the mat", "der Hund lief weit weg", "le chat noir"] * 20, 512)
    torch.manual_seed(0)
    m = build_model(CFG.replace(vocab_size=tok.vocab_size), head="mlm").eval()
    m.tokenizer = tok
    save_pretrained(m, tmp_path / "m")
    texts = ["the cat sat", "", "der Hund lief weit weg, le chat noir"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    # row i is line i+1: a blank line is refused, naming the line, and nothing is written
    assert main(["embed", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.txt"),
                 "--out", str(tmp_path / "v.npy"), "--dtype", "fp32"]) == 1
    assert "in.txt:2: blank line" in capsys.readouterr().err and not (tmp_path / "v.npy").exists()
    (tmp_path / "in.txt").write_text(f"{texts[0]}\n{texts[2]}\n", encoding="utf-8")
    assert main(["embed", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.txt"),
                 "--out", str(tmp_path / "v.npy"), "--dtype", "float32"]) == 0  # either dtype spelling
    vecs = np.load(tmp_path / "v.npy")
    assert vecs.shape == (2, CFG.hidden_size)
    ref = embed(m, [texts[0], texts[2]], tok, dtype="fp32")
    # the CLI's process may use other threads/blocking: the derived fp32 bound (tests/parity_tol.py)
    np.testing.assert_allclose(vecs, ref.numpy(), atol=fp32_atol(ref, widest=WIDEST, depth=DEPTH), rtol=0)

    mask = tok.tokens["mask"]
    assert main(["fill-mask", "--model", str(tmp_path / "m"), "--top-k", "2", f"the {mask} sat"]) == 0
    out = capsys.readouterr().out
    assert "mask 0:" in out and out.count(",") >= 1
    assert main(["embed", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "missing.txt"),
                 "--out", str(tmp_path / "v.npy")]) == 1
    assert "no such input file" in capsys.readouterr().err


def test_equal_length_batches_take_the_view_path_exactly(model):
    """Documents all of one bucket length (fixed-length sets) skip the gather in global layers."""
    for n in (32, 64):
        docs = _docs([n, n, n], seed=n)
        out = embed(model, docs, pooling="none", dtype="fp32")
        for o, r in zip(out, _reference(model, docs)):
            close(o, r)


def test_int8_quantises_the_layers_and_stays_close(model):
    """dtype="int8": every linear layer of the encoder layers becomes a dynamically quantised one
    (so the path cannot silently fall back to fp32), the caller's model is untouched, and the
    embeddings stay close to fp32. Tolerance: weights are int8 per output channel and activations
    uint8 over their range, so each quantised matmul's output carries a relative error of order
    1/127; 5 such matmuls per layer (Wqkv, Wo, the two GeGLU halves, MLP Wo) × 3 layers add up to
    √15/127 ≈ 0.03 ≲ 0.05 relative (errors of independent
    roundings add in quadrature), i.e. cosine ≥ 1 − 0.05²/2 ≈ 0.9987 — asserted with margin at 0.99."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    docs = _docs([30, 5, 70, 1])
    ref = embed(model, docs, dtype="fp32")
    out = embed(model, docs, dtype="int8")
    assert next(model.parameters()).dtype == torch.float32
    assert all(type(m).__name__ == "MLP" for m in (layer.mlp for layer in model.model.layers))
    q = prepare(model.model, torch.qint8)
    lin = [m for layer in q.layers for m in layer.modules() if isinstance(m, (torch.nn.Linear, DynamicInt8Linear))]
    assert len(lin) == 5 * CFG.num_hidden_layers and all(isinstance(m, DynamicInt8Linear) for m in lin)
    assert not torch.equal(out, ref)  # it really computed in int8
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.99
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", torch.device("cuda"))


def test_split_geglu_is_the_same_mlp_exactly(model):
    """The int8 path's GeGLU with Wi as two modules computes exactly what MLP computes (before any
    quantisation): the same two matmuls on the same weight halves."""
    from mmbert.inference import _SplitGeGLU

    mlp = model.model.layers[1].mlp
    x = torch.randn(37, CFG.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(_SplitGeGLU(mlp)(x), mlp(x), rtol=0, atol=0)
