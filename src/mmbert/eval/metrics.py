"""Metrics of the eval harness: accuracy, macro-F1, entity span-F1 (seqeval), retrieval accuracy@1, SQuAD EM/F1,
mean ± std.

    from mmbert.eval.metrics import accuracy, span_f1, retrieval_accuracy, mean_std, squad_scores
    span_f1([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])   # 1.0
    squad_scores(["the Eiffel tower"], [["Eiffel Tower", "tower"]])  # {"exact_match": 1.0, "f1": 1.0}
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

import torch


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of positions where pred == gold (flat sequences of equal length)."""
    if len(pred) != len(gold):
        raise ValueError(f"accuracy: {len(pred)} predictions for {len(gold)} gold labels")
    if not gold:
        return float("nan")
    return sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)


def macro_f1(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Unweighted mean of the per-label F1 over the labels present in gold or predictions (scikit-learn's
    `f1_score(average="macro")`; a label never predicted and never gold does not count)."""
    from sklearn.metrics import f1_score

    if len(pred) != len(gold):
        raise ValueError(f"macro_f1: {len(pred)} predictions for {len(gold)} gold labels")
    if not gold:
        return float("nan")
    return float(f1_score(list(gold), list(pred), average="macro", zero_division=0))


def token_accuracy(pred: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> float:
    """Word-level accuracy over sentences (UD POS)."""
    return accuracy([p for s in pred for p in s], [g for s in gold for g in s])


def span_f1(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    """Micro entity F1 over BIO-tagged sentences, CoNLL style (seqeval's default mode).

    An entity counts only when type and both boundaries match exactly; a stray I- tag starts an
    entity (conlleval convention).
    """
    from seqeval.metrics import f1_score

    if len(pred) != len(gold) or any(len(p) != len(g) for p, g in zip(pred, gold)):
        raise ValueError("span_f1: predictions and gold differ in number of sentences or words")
    return float(f1_score([list(g) for g in gold], [list(p) for p in pred]))


def retrieval_accuracy(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """accuracy@1 of retrieving keys[i] for queries[i] by cosine similarity (row i ↔ row i).

    Ties are broken towards the lowest index (torch.argmax), the usual convention.
    """
    if queries.shape != keys.shape:
        raise ValueError(f"retrieval_accuracy: shapes differ {tuple(queries.shape)} vs {tuple(keys.shape)}")
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    best = (q @ k.T).argmax(dim=-1)
    return float((best == torch.arange(len(q))).float().mean())


def bitext_accuracy(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """accuracy@1 both directions for aligned embeddings a[i] ↔ b[i]: {"a2b": ..., "b2a": ...}."""
    return {"a2b": retrieval_accuracy(a, b), "b2a": retrieval_accuracy(b, a)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


# ----------------------------------------------------------------------------- SQuAD v1.1 (XQuAD)
_PUNCT = set(string.punctuation)  # ASCII only, as in the official script
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 answer normalisation: lowercase, drop ASCII punctuation, drop the
    English articles a/an/the, collapse whitespace (in that order, like `normalize_answer`)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    p = squad_normalize(prediction)
    return float(any(p == squad_normalize(g) for g in golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Max over gold answers of the bag-of-words F1 between normalised whitespace tokens.

    Whitespace tokens: for scripts written without spaces (Chinese, Thai, much of Japanese) a whole
    clause is one token, so F1 is close to exact match there — the official script's behaviour,
    which XTREME also uses for XQuAD (MLQA's variant splits CJK characters; we do not).
    """
    def one(gold: str) -> float:
        p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
        same = sum((Counter(p) & Counter(g)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(p), same / len(g)
        return 2 * precision * recall / (precision + recall)

    return max((one(g) for g in golds), default=0.0)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 over questions (fractions in [0, 1]; the official script prints ×100)."""
    if len(predictions) != len(golds):
        raise ValueError(f"squad_scores: {len(predictions)} predictions for {len(golds)} questions")
    if not golds:
        return {"exact_match": float("nan"), "f1": float("nan")}
    n = len(golds)
    return {"exact_match": sum(squad_exact_match(p, g) for p, g in zip(predictions, golds)) / n,
            "f1": sum(squad_f1(p, g) for p, g in zip(predictions, golds)) / n}
