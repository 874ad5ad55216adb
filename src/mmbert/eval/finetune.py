"""Fine-tune-and-score: a linear head on any Backbone, trained with the shared `train_step`.

    from mmbert.eval.backbone import load_backbone
    from mmbert.eval.finetune import FinetuneConfig, encode_examples, finetune, predict
    bb = load_backbone("out/ckpt")
    train = encode_examples(bb, examples, max_len=128)
    model, losses = finetune(bb, train, num_labels=7, cfg=FinetuneConfig(), seed=0)
    preds = predict(model, encode_examples(bb, test_examples), pad_id=bb.pad_id)

Sequence tasks mean-pool the last hidden states over the attention mask (ModernBERT's default
`classifier_pooling="mean"`, and the same for every backbone so they compare on equal terms); token
tasks label the first sub-word of each word (others are -100). The optimisation step is
`mmbert.step.train_step` — the one the pretraining loop uses: there is no second loop here,
only the schedule of steps (AdamW, linear warm-up then linear decay to 0, gradient clipping).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmbert.eval.backbone import Backbone, hidden_states
from mmbert.eval.data import ChoiceExample, Example, TaggedSentence
from mmbert.data.packing import pad_rows
from mmbert.model.encoder import mean_pool
from mmbert.utils import IGNORE_INDEX, atomic_write


@dataclass
class FinetuneConfig:
    """Small fixed hyperparameters, the same for every backbone (no per-model tuning)."""

    lr: float = 1e-4
    epochs: float = 3.0
    batch_size: int = 32
    max_len: int = 128
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.1
    max_steps: int | None = None  # cap on optimizer steps (quick suites)
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size <= 0 or self.max_len < 4:
            raise ValueError(f"FinetuneConfig needs lr > 0, epochs > 0, batch_size > 0, max_len >= 4; got {self}")


@dataclass
class EncodedSet:
    """Tokenized examples: ids per example, labels (int per example, or per token with -100)."""

    ids: list[list[int]]
    labels: list  # list[int] (sequence) | list[list[int]] (token, aligned with ids)
    word_starts: list[list[int]] | None = None  # token tasks: first-subword position per word (-1: cut)

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------- tokenization + cache
def _cache_path(cache_dir: str | os.PathLike | None, bb: Backbone, kind: str, content: str,
                max_len: int) -> Path | None:
    if cache_dir is None:
        return None
    key = hashlib.sha1(content.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return Path(cache_dir) / bb.fingerprint() / f"{kind}-{max_len}-{key}.npz"


def _save_ragged(path: Path, **arrays: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rows in arrays.items():
        out[f"{name}_flat"] = np.asarray([v for r in rows for v in r], dtype=np.int64)
        out[f"{name}_off"] = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **out)

    atomic_write(path, write)


def _load_ragged(path: Path, name: str) -> list[list[int]]:
    with np.load(path, allow_pickle=False) as z:
        flat, off = z[f"{name}_flat"], z[f"{name}_off"]
    return [flat[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]


def encode_examples(bb: Backbone, examples: Sequence[Example], *, max_len: int = 128,
                    cache_dir: str | os.PathLike | None = None) -> EncodedSet:
    """Classification examples → EncodedSet (cached under cache_dir/<tokenizer hash>/ when given)."""
    has_pair = any(e.text_pair is not None for e in examples)
    content = "\x00".join(e.text + "\x01" + (e.text_pair or "") for e in examples)
    path = _cache_path(cache_dir, bb, "seq", content, max_len)
    if path is not None and path.is_file():
        ids = _load_ragged(path, "ids")
    else:
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if has_pair else None
        ids = bb.tokenize(texts, pairs, max_len=max_len)
        if path is not None:
            _save_ragged(path, ids=ids)
    return EncodedSet(ids=ids, labels=[e.label for e in examples])


def encode_tagged(bb: Backbone, sentences: Sequence[TaggedSentence], *, max_len: int = 128,
                  cache_dir: str | os.PathLike | None = None) -> EncodedSet:
    """Word-tagged sentences → EncodedSet with labels on first sub-words only."""
    content = "\x00".join("\x01".join(s.words) for s in sentences)
    path = _cache_path(cache_dir, bb, "tok", content, max_len)
    if path is not None and path.is_file():
        ids, starts = _load_ragged(path, "ids"), _load_ragged(path, "starts")
    else:
        ids, starts = bb.tokenize_words([s.words for s in sentences], max_len=max_len)
        if path is not None:
            _save_ragged(path, ids=ids, starts=starts)
    labels = []
    for x, st, s in zip(ids, starts, sentences):
        lab = [IGNORE_INDEX] * len(x)
        for pos, tag in zip(st, s.tags):
            if pos >= 0:
                lab[pos] = tag
        labels.append(lab)
    return EncodedSet(ids=ids, labels=labels, word_starts=starts)


# ----------------------------------------------------------------------------- model
class TaskModel(nn.Module):
    """Encoder + dropout + linear classifier; per_token=False mean-pools first."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, *, per_token: bool,
                 dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.per_token = per_token
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = hidden_states(self.encoder, input_ids, attention_mask)
        if not self.per_token:
            h = mean_pool(h, attention_mask)
        return self.classifier(self.dropout(h))  # [B, C] or [B, T, C]


def task_loss_fn(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """train_step loss_fn: (summed cross-entropy, number of labelled items) for both task kinds."""
    dev = next(model.parameters()).device
    logits = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
    labels = batch["labels"].to(dev)
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (labels != IGNORE_INDEX).sum()


def collate(data: EncodedSet, index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [data.ids[i] for i in index]
    ids, mask = pad_rows(rows, pad_id)
    if data.word_starts is None:
        labels = torch.tensor([data.labels[i] for i in index], dtype=torch.long)
    else:  # a label per token, -100 on padding
        labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long)
        for j, i in enumerate(index):
            labels[j, :len(rows[j])] = torch.as_tensor(data.labels[i])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _linear_schedule(total: int, warmup: int):
    def f(step: int) -> float:  # multiplier of the peak LR after `step` optimizer steps
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def finetune(bb: Backbone, train: EncodedSet, *, num_labels: int, cfg: FinetuneConfig | None = None,
             seed: int = 0, progress: bool = True, desc: str = "finetune", loss_fn=task_loss_fn,
             collate_fn=collate, per_token: bool | None = None) -> tuple[TaskModel, list[float]]:
    """Fine-tune a fresh copy of bb.model + a new head on `train`; returns (model, per-step losses).

    loss_fn / collate_fn / per_token: for tasks whose batches are not EncodedSet ones (extractive
    QA, mmbert.eval.qa: a per-token 2-logit span head with its own loss); the default derives
    per_token from train.word_starts.
    """
    from tqdm.auto import tqdm

    from mmbert.step import train_step

    cfg = cfg or FinetuneConfig()
    if len(train) == 0:
        raise ValueError(f"{desc}: no training examples")
    torch.manual_seed(seed)
    model = TaskModel(copy.deepcopy(bb.model), bb.hidden_size, num_labels,
                      per_token=(train.word_starts is not None) if per_token is None else per_token,
                      dropout=cfg.dropout).to(bb.device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, int(round(steps_per_epoch * cfg.epochs)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms, biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _linear_schedule(total, max(1, int(cfg.warmup_frac * total))))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(total), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(train), generator=gen).tolist()
        index, order = order[:cfg.batch_size], order[cfg.batch_size:]
        stats = train_step(model, opt, [collate_fn(train, index, bb.pad_id)], loss_fn,
                           grad_clip=cfg.grad_clip, scheduler=sched)
        losses.append(stats.loss)
        bar.set_postfix(loss=f"{stats.loss:.3f}")
    model.eval()
    return model, losses


@torch.no_grad()
def predict(model: TaskModel, data: EncodedSet, *, pad_id: int, batch_size: int = 64) -> list:
    """Argmax labels: list[int] per example, or list[list[int]] per word for token tasks.

    Words cut by max_len get label 0 (O / the first tag), so truncation costs every model alike.
    """
    model.eval()
    dev = next(model.parameters()).device
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))  # length-sorted: less padding
    out: list = [None] * len(data)
    for s in range(0, len(order), batch_size):
        index = order[s:s + batch_size]
        b = collate(data, index, pad_id)
        pred = model(b["input_ids"].to(dev), b["attention_mask"].to(dev)).argmax(-1).cpu()
        for j, i in enumerate(index):
            if data.word_starts is None:
                out[i] = int(pred[j])
            else:
                out[i] = [int(pred[j, p]) if p >= 0 else 0 for p in data.word_starts[i]]
    return out


# ----------------------------------------------------------------------------- multiple choice
@dataclass
class ChoiceSet:
    """Multiple-choice questions, tokenized: ids[i][j] = framed (context, choice j) of question i."""

    ids: list[list[list[int]]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def encode_choices(bb: Backbone, examples: Sequence[ChoiceExample], *, max_len: int = 128,
                   cache_dir: str | os.PathLike | None = None) -> ChoiceSet:
    """Every (context, choice) pair framed as a text pair, as the pair-classification tasks are."""
    k = len(examples[0].choices) if examples else 0
    pairs = [Example(text=e.context, text_pair=c, label=0) for e in examples for c in e.choices]
    ids = encode_examples(bb, pairs, max_len=max_len, cache_dir=cache_dir).ids
    return ChoiceSet(ids=[ids[i * k:(i + 1) * k] for i in range(len(examples))], labels=[e.label for e in examples])


def choice_collate(data: ChoiceSet, index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """[B questions × k choices] pairs, right-padded, as B·k rows; labels = the right choice per question."""
    ids, mask = pad_rows([r for i in index for r in data.ids[i]], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "num_choices": torch.tensor(len(data.ids[index[0]])),
            "labels": torch.tensor([data.labels[i] for i in index], dtype=torch.long)}


def choice_loss_fn(model: TaskModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One shared score per (context, choice) pair (a 1-output head), softmax over the k choices:
    (summed cross-entropy over questions, number of questions)."""
    dev = next(model.parameters()).device
    k = int(batch["num_choices"])
    scores = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev)).float().view(-1, k)  # [B, k]
    labels = batch["labels"].to(dev)
    return F.cross_entropy(scores, labels, reduction="sum"), torch.tensor(len(labels), device=dev)


@torch.no_grad()
def predict_choices(model: TaskModel, data: ChoiceSet, *, pad_id: int, batch_size: int = 64) -> list[int]:
    """The highest-scoring choice per question."""
    model.eval()
    dev = next(model.parameters()).device
    out: list[int] = []
    per = max(1, batch_size // max(1, len(data.ids[0]) if len(data) else 1))  # questions per batch
    for s in range(0, len(data), per):
        b = choice_collate(data, list(range(s, min(len(data), s + per))), pad_id)
        k = int(b["num_choices"])
        scores = model(b["input_ids"].to(dev), b["attention_mask"].to(dev)).float().view(-1, k)
        out += scores.argmax(-1).cpu().tolist()
    return out
