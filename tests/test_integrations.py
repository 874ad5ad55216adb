"""Downstream libraries load our export: transformers pipeline / AutoModelForSequenceClassification,
sentence-transformers (SentenceTransformer + MNRL step, CrossEncoder, SparseEncoder) and PyLate ColBERT.

The model is a tiny mmbert encoder with a tokenizer trained in the test, exported by us.
"""

import pytest
import torch

from mmbert.export.hf import save_pretrained
from mmbert.model import EncoderConfig, build_model

TEXT = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Le renard brun saute par-dessus le chien paresseux près de la rivière.",
    "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
    "Быстрая коричневая лиса прыгает через ленивую собаку у реки.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول بالقرب من النهر.",
    "तेज़ भूरी लोमड़ी नदी के किनारे आलसी कुत्ते के ऊपर कूदती है।",
    "敏捷的棕色狐狸跳过了河边懒惰的狗。",
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from mmbert.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("integ")
    corpus = root / "corpus"
    for i, lang in enumerate(["eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva", "cmn_Hani"]):
        (corpus / lang).mkdir(parents=True)
        (corpus / lang / "a.txt").write_text((TEXT[i] + "\n\n") * 20)
    tok = train_tokenizer(corpus, vocab_size=512, out_dir=root / "tok")
    cfg = EncoderConfig.from_preset("tiny", vocab_size=tok.vocab_size, num_hidden_layers=2, hidden_size=64,
                                    intermediate_size=96, num_attention_heads=2)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.tokenizer = tok
    out = root / "export"
    save_pretrained(model, out)
    return out


def test_fill_mask_pipeline(export_dir):
    from transformers import pipeline

    fm = pipeline("fill-mask", model=str(export_dir), device="cpu")
    res = fm(f"The quick brown {fm.tokenizer.mask_token} jumps.", top_k=3)
    assert len(res) == 3 and all(0.0 <= r["score"] <= 1.0 for r in res)


def test_sequence_classification_finetune_step(export_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForSequenceClassification.from_pretrained(export_dir, num_labels=3)
    enc = tok(TEXT[:4], padding=True, return_tensors="pt")
    labels = torch.tensor([0, 1, 2, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_sentence_transformer_mnrl_step(export_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(export_dir), device="cpu")
    emb = model.encode(TEXT)
    assert emb.shape == (len(TEXT), 64)
    loss_fn = MultipleNegativesRankingLoss(model)
    feats = [model.tokenize(TEXT[:3]), model.tokenize(TEXT[3:6])]
    loss = loss_fn(feats, labels=None)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_cross_encoder(export_dir):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(export_dir), num_labels=1, device="cpu")
    scores = ce.predict([(TEXT[0], TEXT[1]), (TEXT[0], TEXT[6])])
    assert scores.shape == (2,) and torch.isfinite(torch.as_tensor(scores)).all()


def test_sparse_encoder_splade(export_dir):
    from sentence_transformers import SparseEncoder

    se = SparseEncoder(str(export_dir), device="cpu")
    emb = se.encode(TEXT[:2], convert_to_tensor=True)
    assert emb.shape[0] == 2 and emb.shape[1] == se.get_sentence_embedding_dimension()  # 5.3 name
    dense = emb.to_dense() if emb.is_sparse else emb
    assert (dense >= 0).all() and torch.isfinite(dense).all()


def test_pylate_colbert(export_dir):
    from pylate import models

    colbert = models.ColBERT(str(export_dir), device="cpu")
    q = colbert.encode(["where is the fox?"], is_query=True)
    d = colbert.encode(TEXT[:2], is_query=False)
    assert q[0].shape[-1] == d[0].shape[-1] and torch.isfinite(torch.as_tensor(d[0])).all()
