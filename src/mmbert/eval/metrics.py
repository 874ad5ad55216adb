"""Metrics of the eval harness: accuracy, entity span-F1 (seqeval), retrieval accuracy@1, mean ± std.

    from mmbert.eval.metrics import accuracy, span_f1, retrieval_accuracy, mean_std
    span_f1([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])   # 1.0
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of positions where pred == gold (flat sequences of equal length)."""
    if len(pred) != len(gold):
        raise ValueError(f"accuracy: {len(pred)} predictions for {len(gold)} gold labels")
    if not gold:
        return float("nan")
    return sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)


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
