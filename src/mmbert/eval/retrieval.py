"""Zero-shot bitext retrieval: mean-pooled sentence embeddings, no fine-tuning, accuracy@1 both ways.

    from mmbert.eval.backbone import load_backbone
    from mmbert.eval.retrieval import bitext, embed
    bb = load_backbone("out/ckpt")
    bitext(bb, ["Hallo Welt", ...], ["Hello world", ...])       # {"xx2en": .., "en2xx": ..}

The `bitext-retrieval` task type of the task files (mmbert.eval.taskfile; built-in: tatoeba,
sib200-retrieval, xquad-retrieval) runs these. Embedding = mean of the last hidden states over the
attention mask (special tokens included, as in the classifier), L2-normalised; the nearest neighbour by
cosine similarity among all candidates of the other side must be the aligned sentence.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mmbert.data.packing import pad_rows
from mmbert.eval.backbone import Backbone, hidden_states
from mmbert.eval.metrics import bitext_accuracy
from mmbert.model.encoder import mean_pool


@torch.no_grad()
def embed(bb: Backbone, texts: Sequence[str], *, max_len: int = 128, batch_size: int = 64) -> torch.Tensor:
    """Texts → [N, H] mean-pooled, L2-normalised embeddings (float32, on CPU)."""
    ids = bb.tokenize(list(texts), max_len=max_len)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), bb.hidden_size)
    bb.model.eval()
    for s in range(0, len(order), batch_size):
        index = order[s:s + batch_size]
        x, m = pad_rows([ids[i] for i in index], bb.pad_id)
        h = hidden_states(bb.model, x.to(bb.device), m.to(bb.device))
        out[index] = mean_pool(h.float(), m.to(h.device)).cpu()
    return torch.nn.functional.normalize(out, dim=-1)


def bitext(bb: Backbone, src: Sequence[str], tgt: Sequence[str] | torch.Tensor, *, max_len: int = 128
           ) -> dict[str, float]:
    """accuracy@1 of aligned texts src[i] ↔ tgt[i] both ways: {"xx2en": src→tgt, "en2xx": tgt→src}.
    tgt may be given already embedded (a pivot shared by many languages is embedded once)."""
    t = tgt if isinstance(tgt, torch.Tensor) else embed(bb, tgt, max_len=max_len)
    acc = bitext_accuracy(embed(bb, src, max_len=max_len), t)
    return {"xx2en": acc["a2b"], "en2xx": acc["b2a"]}


def question_to_paragraph(bb: Backbone, questions: Sequence[str], para_emb: torch.Tensor, target: torch.Tensor, *,
                          max_len: int = 256) -> float:
    """accuracy@1 of retrieving paragraph target[i] (rows of para_emb) for questions[i] (one direction:
    a paragraph has several questions)."""
    q = embed(bb, questions, max_len=max_len)
    return float(((q @ para_emb.T).argmax(-1) == target).float().mean())
