"""Zero-shot bitext retrieval: mean-pooled sentence embeddings, no fine-tuning, accuracy@1 both ways.

    from mmbert.eval.backbone import load_backbone
    from mmbert.eval.retrieval import tatoeba, sib200_retrieval
    bb = load_backbone("out/ckpt")
    tatoeba(bb, data_dir, languages=["deu", "fra"])      # {"deu": {"xx2en": .., "en2xx": ..}, ...}

Embedding = mean of the last hidden states over the attention mask (special tokens included, as in
the classifier), L2-normalised; the nearest neighbour by cosine similarity among all candidates of
the other side must be the aligned sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from mmbert.eval import data as D
from mmbert.eval.backbone import Backbone
from mmbert.eval.finetune import mean_pool
from mmbert.eval.metrics import bitext_accuracy


@torch.no_grad()
def embed(bb: Backbone, texts: Sequence[str], *, max_len: int = 128, batch_size: int = 64) -> torch.Tensor:
    """Texts → [N, H] mean-pooled, L2-normalised embeddings (float32, on CPU)."""
    ids = bb.tokenize(list(texts), max_len=max_len)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), bb.hidden_size)
    bb.model.eval()
    for s in range(0, len(order), batch_size):
        index = order[s:s + batch_size]
        x, m = bb.pad([ids[i] for i in index])
        h = bb.encode(x.to(bb.device), m.to(bb.device))
        out[index] = mean_pool(h.float(), m.to(h.device)).cpu()
    return torch.nn.functional.normalize(out, dim=-1)


def tatoeba(bb: Backbone, root: Path, *, languages: Sequence[str] | None = None,
            max_pairs: int | None = None, max_len: int = 128, progress: bool = True) -> dict[str, dict[str, float]]:
    """Tatoeba xxx↔eng accuracy@1 per language: {"xxx": {"xx2en": acc, "en2xx": acc}}."""
    langs = list(languages) if languages is not None else D.tatoeba_languages(root)
    res = {}
    for lang in tqdm(langs, desc="tatoeba", disable=not progress, leave=False):
        src, eng = D.load_tatoeba(root, lang)
        if max_pairs is not None:
            src, eng = src[:max_pairs], eng[:max_pairs]
        acc = bitext_accuracy(embed(bb, src, max_len=max_len), embed(bb, eng, max_len=max_len))
        res[lang] = {"xx2en": acc["a2b"], "en2xx": acc["b2a"], "n": len(src)}
    return res


def sib200_retrieval(bb: Backbone, root: Path, *, languages: Sequence[str] | None = None,
                     split: str = "test", pivot: str = "eng_Latn", max_len: int = 128,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """SIB-200 (FLORES) sentences aligned by index_id with the pivot: {"lang": {"xx2en", "en2xx"}}."""
    pivot_ex = {e.id: e.text for e in D.load_sib200(root, pivot, split)}
    langs = [lang for lang in (languages if languages is not None else D.sib200_languages(root)) if lang != pivot]
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    res = {}
    for lang in tqdm(langs, desc="sib200-retrieval", disable=not progress, leave=False):
        ex = [e for e in D.load_sib200(root, lang, split) if e.id in pivot_ex]
        keys = tuple(e.id for e in ex)
        if keys not in cache:  # every language has the same ids: embed the pivot once
            cache[keys] = embed(bb, [pivot_ex[k] for k in keys], max_len=max_len)
        acc = bitext_accuracy(embed(bb, [e.text for e in ex], max_len=max_len), cache[keys])
        res[lang] = {"xx2en": acc["a2b"], "en2xx": acc["b2a"], "n": len(ex)}
    return res


def xquad_retrieval(bb: Backbone, root: Path, *, languages: Sequence[str] | None = None, pivot: str = "en",
                    max_len: int = 256, progress: bool = True) -> dict[str, dict[str, float]]:
    """XQuAD question (each language) → paragraph (pivot language) retrieval, accuracy@1.

    XQuAD is parallel: question i of every language belongs to the same paragraph. Each question
    must retrieve its paragraph among the pivot's 240 distinct paragraphs (one direction only: a
    paragraph has several questions). Returns {"lang": {"q2p": acc}}.
    """
    pivot_qa = D.load_xquad(root, pivot)
    paragraphs = list(dict.fromkeys(q["context"] for q in pivot_qa))
    target = torch.tensor([paragraphs.index(q["context"]) for q in pivot_qa])
    para_emb = embed(bb, paragraphs, max_len=max_len)
    res = {}
    for lang in tqdm(list(languages) if languages is not None else D.xquad_languages(root), desc="xquad-retrieval",
                     disable=not progress, leave=False):
        qa = D.load_xquad(root, lang)
        if len(qa) != len(pivot_qa):
            raise D.EvalDataError(f"{root / 'xquad' / f'xquad.{lang}.json'}: {len(qa)} questions, the pivot "
                                  f"has {len(pivot_qa)}; XQuAD files must be parallel")
        q = embed(bb, [x["question"] for x in qa], max_len=max_len)
        res[lang] = {"q2p": float(((q @ para_emb.T).argmax(-1) == target).float().mean()), "n": len(qa)}
    return res
