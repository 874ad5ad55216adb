"""Extractive question answering on XQuAD (XTREME's QA task): a span head fine-tuned on English, zero-shot
evaluation in every language, SQuAD v1.1 exact match / F1.

    mmbert eval --model out/ckpt --suite full --tasks xquad --out out/eval/ckpt
    from mmbert.eval.backbone import load_backbone
    from mmbert.eval.qa import xquad_qa
    r = xquad_qa(load_backbone("out/ckpt"), root, languages=["en", "de"], seeds=(0,))

Protocol (docs/eval.md): XQuAD has one labelled split per language, 240 paragraphs that are the same in
all 12 languages. We fine-tune on the English questions of the first 120 paragraphs (file order of
xquad.en.json) and evaluate on the questions of the other 120 paragraphs in every language, English
included, so no translation of a training paragraph is ever tested.

Model: the encoder + a Linear(hidden → 2) giving start/end logits per token (`TaskModel` with
per_token=True and 2 labels), trained by `finetune.finetune` — i.e. through `mmbert.step.
train_step` — with `qa_loss_fn` (mean of the start and end cross-entropies over positions). Each input
is `<cls> question <sep> context-window <sep>` (or the tokenizer's own pair framing); a context longer
than the window is cut into windows that overlap by `stride` tokens (HF run_qa's doc-stride). A training
window that does not contain the whole answer points start and end at position 0 (the CLS/BOS token,
SQuAD v1 practice). Prediction: the best start ≤ end span of at most 30 tokens over all windows of a
question (by start + end logit), mapped back to the context text through the fast tokenizer's offsets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from mmbert.eval import data as D
from mmbert.eval.data import QAExample, load_squad
from mmbert.eval.backbone import Backbone
from mmbert.data.packing import pad_rows
from mmbert.eval.finetune import FinetuneConfig, _cache_path, _load_ragged, _save_ragged, finetune
from mmbert.eval.metrics import mean_std, squad_scores

TRAIN_PARAGRAPHS = 120  # XQuAD: paragraphs [0, 120) of the English file train, [120, 240) are tested
MAX_QUERY_LEN = 64  # question tokens kept (the end is cut), as in the SQuAD BERT scripts
MAX_ANSWER_LEN = 30  # tokens, as in HF run_qa


def xquad_split(root: Path, lang: str, pivot: list[QAExample] | None = None,
                train_paragraphs: int = TRAIN_PARAGRAPHS) -> tuple[list[QAExample], list[QAExample]]:
    """(questions of paragraphs < train_paragraphs, the rest) of xquad/xquad.<lang>.json.

    pivot: the English questions; when given, the file must be parallel to it (same ids in the same
    paragraphs), else the held-out half would not be the same paragraphs in every language.
    """
    ex = load_squad(D.xquad_file(root, lang))
    if pivot is not None and [(e.id, e.paragraph) for e in ex] != [(e.id, e.paragraph) for e in pivot]:
        raise D.EvalDataError(f"{root / 'xquad' / f'xquad.{lang}.json'}: question ids / paragraphs differ from "
                              f"xquad.en.json; XQuAD files must be parallel")
    return [e for e in ex if e.paragraph < train_paragraphs], [e for e in ex if e.paragraph >= train_paragraphs]


# ----------------------------------------------------------------------------- tokens and windows
def pair_framing(bb: Backbone) -> tuple[list[int], list[int], list[int]]:
    """Special ids (before the question, between question and context, after the context).

    Ours: <cls> q <sep> c <sep>. A tokenizer that frames pairs itself is probed (BERT: [CLS] q [SEP]
    c [SEP]; XLM-R: <s> q </s></s> c </s>), as `Backbone.tokenize` does for pair tasks.
    """
    if bb.native:
        a = list(bb.tokenizer("hello", add_special_tokens=False)["input_ids"])
        b = list(bb.tokenizer("world", add_special_tokens=False)["input_ids"])
        full = list(bb.tokenizer("hello", "world")["input_ids"])
        for i in range(len(full) - len(a) + 1):
            if full[i:i + len(a)] == a:
                for j in range(i + len(a), len(full) - len(b) + 1):
                    if full[j:j + len(b)] == b:
                        return full[:i], full[i + len(a):j], full[j + len(b):]
    return list(bb.prefix), list(bb.suffix), list(bb.suffix)


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Character span [start, end) → (first, last) token index covering it; None if no token overlaps.

    First token = the first one ending after `start` (a token may carry the preceding space, e.g.
    '▁cat' = ' cat'); last = the last one starting before `end`.
    """
    first = next((t for t, (s, e) in enumerate(offsets) if e > start and e > s), None)
    last = next((t for t in range(len(offsets) - 1, -1, -1) if offsets[t][0] < end and offsets[t][1] > offsets[t][0]),
                None)
    if first is None or last is None or last < first:
        return None
    return first, last


def token_span_to_text(context: str, offsets: Sequence[tuple[int, int]], first: int, last: int) -> str:
    """Token span → the context text it covers (outer whitespace stripped)."""
    return context[offsets[first][0]:offsets[last][1]].strip()


def windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[lo, hi) windows of at most `size` tokens over n tokens, consecutive ones overlapping by
    min(stride, size // 2) tokens (HF run_qa's doc-stride; the cap keeps the step ≥ size / 2); the
    last window ends at n. Every token is in at least one window; n = 0 gives one empty window."""
    if size < 1:
        raise ValueError(f"windows: size must be ≥ 1, got {size}")
    step = size - min(stride, size // 2)
    out, lo = [], 0
    while True:
        out.append((lo, min(n, lo + size)))
        if lo + size >= n:
            return out
        lo += step


@dataclass
class QAFeatures:
    """Model inputs: one row per (question, context window). `len()` = number of windows."""

    ids: list[list[int]]
    example: list[int]  # index of the question each window belongs to
    ctx_pos: list[int]  # position in ids of the window's first context token
    window: list[tuple[int, int]]  # [lo, hi) context-token range of the window
    start: list[int]  # training targets (0 = CLS: answer not inside the window)
    end: list[int]
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)  # per question: context token offsets

    def __len__(self) -> int:
        return len(self.ids)


def _tokenize(bb: Backbone, examples: Sequence[QAExample], cache_dir) -> tuple[list, list, list, list[int]]:
    """(question ids, unique-context ids, unique-context offsets, context index per question); cached."""
    if not getattr(bb.tokenizer, "is_fast", False):
        raise ValueError(f"xquad needs a fast tokenizer (character offsets); {type(bb.tokenizer).__name__} "
                         f"is not one: save a tokenizer.json with the model")
    contexts = list(dict.fromkeys(e.context for e in examples))
    where = {c: i for i, c in enumerate(contexts)}
    content = "\x00".join(e.question for e in examples) + "\x02" + "\x00".join(contexts)
    path = _cache_path(cache_dir, bb, "qa", content, 0)
    if path is not None and path.is_file():
        q_ids, c_ids, c_off = _load_ragged(path, "q"), _load_ragged(path, "c"), _load_ragged(path, "off")
    else:
        tok = lambda texts, **kw: bb.tokenizer(texts, add_special_tokens=False, **kw) if texts else \
            {"input_ids": [], "offset_mapping": []}  # noqa: E731
        q_ids = [list(x) for x in tok([e.question for e in examples])["input_ids"]]
        enc = tok(contexts, return_offsets_mapping=True)
        c_ids = [list(x) for x in enc["input_ids"]]
        c_off = [[v for se in o for v in se] for o in enc["offset_mapping"]]
        if path is not None:
            _save_ragged(path, q=q_ids, c=c_ids, off=c_off)
    offsets = [list(zip(o[0::2], o[1::2])) for o in c_off]
    return q_ids, c_ids, offsets, [where[e.context] for e in examples]


def build_features(bb: Backbone, examples: Sequence[QAExample], *, max_len: int = 256, stride: int = 128,
                   cache_dir: str | os.PathLike | None = None) -> QAFeatures:
    """Questions → windows `pre question mid context[lo:hi] post` of at most max_len ids, with targets
    from each question's first answer."""
    pre, mid, post = pair_framing(bb)
    q_max = min(MAX_QUERY_LEN, (max_len - len(pre) - len(mid) - len(post)) // 2)
    if q_max < 1:
        raise ValueError(f"xquad: max_len {max_len} leaves no room for question and context")
    q_ids, c_ids, c_offsets, c_index = _tokenize(bb, examples, cache_dir)
    f = QAFeatures(ids=[], example=[], ctx_pos=[], window=[], start=[], end=[])
    for i, e in enumerate(examples):
        q = q_ids[i][:q_max]
        ctx, offsets = c_ids[c_index[i]], c_offsets[c_index[i]]
        f.offsets.append(offsets)
        size = max_len - len(pre) - len(q) - len(mid) - len(post)
        a = e.answer_starts[0]
        span = char_to_token_span(offsets, a, a + len(e.answers[0]))
        pos = len(pre) + len(q) + len(mid)
        for lo, hi in windows(len(ctx), size, stride):
            f.ids.append(pre + q + mid + ctx[lo:hi] + post)
            f.example.append(i)
            f.ctx_pos.append(pos)
            f.window.append((lo, hi))
            inside = span is not None and lo <= span[0] and span[1] < hi
            f.start.append(pos + span[0] - lo if inside else 0)
            f.end.append(pos + span[1] - lo if inside else 0)
    return f


# ----------------------------------------------------------------------------- model
def qa_collate(data: QAFeatures, index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of windows + start/end targets (finetune's collate_fn)."""
    ids, mask = pad_rows([data.ids[i] for i in index], pad_id)
    return {"input_ids": ids, "attention_mask": mask,
            "start_positions": torch.tensor([data.start[i] for i in index], dtype=torch.long),
            "end_positions": torch.tensor([data.end[i] for i in index], dtype=torch.long)}


def qa_loss_fn(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """train_step loss_fn: (sum over windows of (CE(start) + CE(end)) / 2, number of windows).

    The cross-entropies run over the positions of each window; padding positions are excluded.
    """
    dev = next(model.parameters()).device
    mask = batch["attention_mask"].to(dev)
    logits = model(batch["input_ids"].to(dev), mask).float()  # [B, T, 2]
    logits = logits.masked_fill((mask == 0).unsqueeze(-1), torch.finfo(logits.dtype).min)
    loss = (F.cross_entropy(logits[..., 0], batch["start_positions"].to(dev), reduction="sum")
            + F.cross_entropy(logits[..., 1], batch["end_positions"].to(dev), reduction="sum")) / 2
    return loss, torch.tensor(len(mask), device=dev)


@torch.no_grad()
def predict_answers(model, data: QAFeatures, examples: Sequence[QAExample], *, pad_id: int, batch_size: int = 64,
                    max_answer_len: int = MAX_ANSWER_LEN) -> list[str]:
    """Best span per question: argmax of start + end logit over context tokens of all its windows,
    start ≤ end < start + max_answer_len; returned as context text."""
    model.eval()
    dev = next(model.parameters()).device
    best: list[tuple[float, int, int]] = [(-float("inf"), 0, -1)] * len(examples)
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))  # length-sorted: less padding
    for s in range(0, len(order), batch_size):
        index = order[s:s + batch_size]
        b = qa_collate(data, index, pad_id)
        logits = model(b["input_ids"].to(dev), b["attention_mask"].to(dev)).float().cpu()  # [B, T, 2]
        B, T = logits.shape[:2]
        pos = torch.arange(T)
        lo_pos = torch.tensor([data.ctx_pos[i] for i in index])
        n_ctx = torch.tensor([data.window[i][1] - data.window[i][0] for i in index])
        in_ctx = (pos >= lo_pos[:, None]) & (pos < (lo_pos + n_ctx)[:, None])  # [B, T]
        gap = pos[None, :] - pos[:, None]  # end - start
        ok = in_ctx[:, :, None] & in_ctx[:, None, :] & (gap >= 0) & (gap < max_answer_len)
        score = (logits[:, :, 0, None] + logits[:, None, :, 1]).masked_fill(~ok, -float("inf"))
        val, flat = score.view(B, -1).max(-1)
        for j, i in enumerate(index):
            if n_ctx[j] == 0:
                continue
            st, en = divmod(int(flat[j]), T)
            lo, c = data.window[i][0], data.ctx_pos[i]
            ex = data.example[i]
            if float(val[j]) > best[ex][0]:
                best[ex] = (float(val[j]), lo + st - c, lo + en - c)
    return [token_span_to_text(e.context, data.offsets[k], b[1], b[2]) if b[2] >= 0 else ""
            for k, (e, b) in enumerate(zip(examples, best))]


# ----------------------------------------------------------------------------- the task
def finetune_qa(bb: Backbone, train_ex: Sequence[QAExample], tests: dict[str, Sequence[QAExample]], *,
                seeds: Sequence[int] = (0,), epochs: float = 2.0, max_len: int = 256, stride: int | None = None,
                lr: float = 1e-4, batch_size: int = 32, cache_dir: str | os.PathLike | None = None,
                progress: bool = True, desc: str = "qa") -> dict:
    """Fine-tune a span head on `train_ex` once per seed, score every language's questions (SQuAD v1.1 F1
    and exact match). Returns the runner's result dict without "metric"/"protocol": per language F1
    ("mean"/"std"/"values") and exact match, macro averages (F1 = the headline "average").
    stride default: max_len // 2."""
    from tqdm.auto import tqdm

    stride = max_len // 2 if stride is None else stride
    langs = list(tests)
    train = build_features(bb, train_ex, max_len=max_len, stride=stride, cache_dir=cache_dir)
    evals = {lang: (tests[lang], build_features(bb, tests[lang], max_len=max_len, stride=stride, cache_dir=cache_dir))
             for lang in langs}
    cfg = FinetuneConfig(lr=lr, epochs=epochs, max_len=max_len, batch_size=batch_size)
    f1s: dict[str, list[float]] = {l: [] for l in langs}
    ems: dict[str, list[float]] = {l: [] for l in langs}
    avg_f1, avg_em, final_loss = [], [], []
    for seed in seeds:
        model, losses = finetune(bb, train, num_labels=2, cfg=cfg, seed=seed, progress=progress,
                                 desc=f"{desc} seed {seed}", loss_fn=qa_loss_fn, collate_fn=qa_collate, per_token=True)
        final_loss.append(sum(losses[-10:]) / len(losses[-10:]))
        for lang in tqdm(langs, desc=f"{desc} eval", disable=not progress, leave=False):
            test, feats = evals[lang]
            preds = predict_answers(model, feats, test, pad_id=bb.pad_id, batch_size=cfg.eval_batch_size)
            s = squad_scores(preds, [e.answers for e in test])
            f1s[lang].append(s["f1"])
            ems[lang].append(s["exact_match"])
        avg_f1.append(sum(f1s[l][-1] for l in langs) / len(langs))
        avg_em.append(sum(ems[l][-1] for l in langs) / len(langs))
        del model

    def stats(f1: list[float], em: list[float]) -> dict:
        (m, s), (em_m, em_s) = mean_std(f1), mean_std(em)
        return {"mean": m, "std": s, "values": f1, "exact_match": em_m, "exact_match_std": em_s,
                "exact_match_values": em}

    return {"languages": {l: {**stats(f1s[l], ems[l]), "questions": len(evals[l][0])} for l in langs},
            "average": stats(avg_f1, avg_em), "train_size": len(train_ex), "train_windows": len(train),
            "seeds": list(seeds), "epochs": epochs, "final_train_loss": final_loss,
            "hyperparameters": {**cfg.__dict__, "stride": stride, "max_query_len": MAX_QUERY_LEN,
                                "max_answer_len": MAX_ANSWER_LEN}}


def xquad_qa(bb: Backbone, root: Path, *, languages: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
             epochs: float = 2.0, max_len: int = 256, stride: int | None = None,
             train_paragraphs: int = TRAIN_PARAGRAPHS, max_train: int | None = None, max_eval: int | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool = True, lr: float = 1e-4) -> dict:
    """Fine-tune on English paragraphs [0, train_paragraphs), score paragraphs [train_paragraphs, …) per
    language (the protocol of docs/eval.md; the `xquad` task file runs the same through `finetune_qa`).

    max_train: at most this many training questions (the first ones); max_eval: per language.
    """
    stride = max_len // 2 if stride is None else stride
    en_train, en_test = xquad_split(root, "en", train_paragraphs=train_paragraphs)
    pivot = en_train + en_test
    langs = list(languages) if languages is not None else D.xquad_languages(root)
    train_ex = en_train if max_train is None else en_train[:max_train]
    if not train_ex:
        raise D.EvalDataError(f"{root / 'xquad' / 'xquad.en.json'}: no questions in the first {train_paragraphs} "
                              f"paragraphs to fine-tune on")
    tests = {}
    for lang in langs:
        test = en_test if lang == "en" else xquad_split(root, lang, pivot, train_paragraphs)[1]
        test = test if max_eval is None else test[:max_eval]
        if not test:
            raise D.EvalDataError(f"{root / 'xquad' / f'xquad.{lang}.json'}: no questions after paragraph "
                                  f"{train_paragraphs - 1} to evaluate")
        tests[lang] = test
    r = finetune_qa(bb, train_ex, tests, seeds=seeds, epochs=epochs, max_len=max_len, stride=stride, lr=lr,
                    cache_dir=cache_dir, progress=progress, desc="xquad")
    return {"metric": "F1 (SQuAD v1.1; exact match alongside)",
            "protocol": f"fine-tune on English questions of paragraphs 0-{train_paragraphs - 1}, zero-shot on "
                        f"paragraphs {train_paragraphs}+ in every language; span head, windows of {max_len} "
                        f"tokens with stride {stride}, answers ≤ {MAX_ANSWER_LEN} tokens"
                        + (f"; first {max_train} training questions" if max_train is not None else "")
                        + (f"; first {max_eval} held-out questions per language" if max_eval is not None else ""),
            **r}
