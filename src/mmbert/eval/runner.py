"""One runner for the whole harness: `mmbert eval --model PATH --suite quick|full` or `--task-file FILE`.

    mmbert eval --model out/ckpt --suite quick --out out/eval/ckpt            # ≤ 5 min, tiny preset, CPU
    mmbert eval --model path/to/xlm-r --suite full --out out/eval/xlmr --num-seeds 3
    mmbert eval --model out/ckpt --task-file my_tasks.yaml --out out/eval/mine
    python -c "from mmbert.eval.runner import run_suite; run_suite('out/ckpt', 'quick', out_dir='out/eval/x')"

Writes <out>/results.json, <out>/results.md (summary + per-language tables) and <out>/plots/<task>.png,
and caches tokenized data under <out>/cache/<tokenizer hash>/. Every task — the built-in ones included —
is a declarative task (mmbert.eval.taskfile; schema in docs/eval.md), run here by one function per task
type. The suites `quick` / `full` are lists of the built-in task files. A task whose `requires:` folder
is absent is skipped with one message; a malformed data line or a task declared wrongly stops that task
with the task, file and line number (recorded in the results; other tasks still run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from mmbert.eval import data as D
from mmbert.eval import taskfile as TF
from mmbert.eval.backbone import Backbone, load_backbone
from mmbert.eval.finetune import (FinetuneConfig, choice_collate, choice_loss_fn, encode_choices, encode_examples,
                                  encode_tagged, finetune, predict, predict_choices)
from mmbert.eval.metrics import accuracy, macro_f1, mean_std, span_f1, token_accuracy
from mmbert.eval.taskfile import InvalidTask, Task, TaskError
from mmbert.threads import ThreadPolicy
from mmbert.utils import IGNORE_INDEX, atomic_write


# ----------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class TaskSpec:
    """A built-in task by name with the protocol fields of the pre-task-file API set explicitly
    (`languages=None` = every language present; caps are per language). `to_task()` gives the Task:
    epochs / max_len / max_train / max_eval always replace the task file's values (as they did before)."""

    name: str  # a built-in task (src/mmbert/eval/tasks/<name>.yaml)
    languages: tuple[str, ...] | None = None
    max_train: int | None = None
    max_eval: int | None = None
    epochs: float = 3.0
    max_len: int = 128
    train_rows: int | None = None  # XNLI / PAWS-X: English dev rows [0, train_rows) train, the rest test
    # (xquad: English paragraphs [0, train_rows) train)
    max_languages: int | None = None  # mlm: at most this many languages, spread over the size ranking

    def to_task(self) -> Task:
        t = TF.builtin_task(self.name)
        proto = dict(epochs=float(self.epochs), max_len=self.max_len, max_train=self.max_train,
                     max_eval=self.max_eval)
        if t.type == "mlm":
            proto.update(max_eval=None, max_tokens=self.max_eval, max_languages=self.max_languages)
        langs = self.languages
        if langs is not None and self.name == "udpos":  # treebank folders were named with their UD_ prefix
            langs = tuple(l.removeprefix("UD_") for l in langs)
        t = dataclasses.replace(t, protocol=dataclasses.replace(t.protocol, **proto),
                                languages=langs if langs is not None else t.languages)
        if self.train_rows is not None:  # the description's row ranges no longer hold: the generated text says them
            key = "paragraphs" if t.type == "extractive-qa" else "rows"
            t = dataclasses.replace(t, description=None,
                                    train=dataclasses.replace(t.train, **{key: (0, self.train_rows)}),
                                    eval=dataclasses.replace(t.eval, **{key: (self.train_rows, None)}))
        return t


def suite_tasks(suite: str) -> list[Task]:
    """The tasks of a built-in suite: `full` = every built-in task; `quick` = a subset of it, shrunk
    (src/mmbert/eval/tasks/{full,quick}.yaml)."""
    return TF.suite(suite)


# ----------------------------------------------------------------------------- shared helpers
def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic JSON write (temp file + os.replace); NaN written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_nan_to_none(obj), indent=2, ensure_ascii=False)
    atomic_write(path, text)


def _nan_to_none(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


@dataclass
class _Ctx:
    bb: Backbone
    root: Path
    seeds: tuple[int, ...]
    cache: Path
    progress: bool
    model_path: Path
    shards: Path | None


class _Skip(Exception):
    pass


def _cap(items: list, n: int | None) -> list:
    return items if n is None else items[:n]


def _langs(task: Task, present: Sequence[str]) -> list[str]:
    if task.languages is None:
        return list(present)
    langs = [l for l in task.languages if l in present]  # a suite's subset, as far as the data has it
    if not langs:
        raise D.EvalDataMissing(f"{task.name}: none of the languages {list(task.languages)} is in the data "
                                f"(found: {', '.join(present) or 'none'}); check --data-dir or `languages:`")
    return langs


def _seeds(ctx: _Ctx, task: Task) -> tuple[int, ...]:
    return task.protocol.seeds if task.protocol.seeds is not None else ctx.seeds


def _root(ctx: _Ctx, task: Task) -> Path:
    return task.base if task.base is not None else ctx.root


def _cfg(task: Task) -> FinetuneConfig:
    p = task.protocol
    return FinetuneConfig(epochs=p.epochs, max_len=p.max_len, lr=p.lr, batch_size=p.batch_size)


def _finetune_eval(ctx: _Ctx, task: Task, train, evals: dict[str, tuple[Any, list]], num_labels: int,
                   score: Callable[[list, list], float]) -> dict:
    """Fine-tune once per seed, score every eval language; mean ± std over seeds. Each language also
    gets its sample size `n` and the score of predicting the training set's most frequent label
    everywhere (`majority`); `floors` holds their average and, for accuracy, chance (1/labels)."""
    cfg = _cfg(task)
    choice = task.type == "multiple-choice"
    seeds = _seeds(ctx, task)
    seq = lambda y: hasattr(y, "__len__")  # noqa: E731  (token tasks: a label per word)
    flat = [int(y) for ys in train.labels for y in (ys if seq(ys) else [ys]) if y != IGNORE_INDEX]
    top = Counter(flat).most_common(1)[0][0] if flat else 0
    majority = {l: score([[top] * len(g) if seq(g) else top for g in gold], gold) for l, (_, gold) in evals.items()}
    per_seed: dict[str, list[float]] = {l: [] for l in evals}
    avg_seed, final_loss = [], []
    for seed in seeds:
        kw = dict(loss_fn=choice_loss_fn, collate_fn=choice_collate, per_token=False) if choice else {}
        model, losses = finetune(ctx.bb, train, num_labels=1 if choice else num_labels, cfg=cfg, seed=seed,
                                 progress=ctx.progress, desc=f"{task.name} seed {seed}", **kw)
        final_loss.append(sum(losses[-10:]) / len(losses[-10:]))
        vals = []
        for lang, (enc, gold) in tqdm(evals.items(), desc=f"{task.name} eval", disable=not ctx.progress,
                                      leave=False):
            fn = predict_choices if choice else predict
            v = score(fn(model, enc, pad_id=ctx.bb.pad_id, batch_size=cfg.eval_batch_size), gold)
            per_seed[lang].append(v)
            vals.append(v)
        avg_seed.append(sum(vals) / len(vals))
        del model
    langs = {l: dict(zip(("mean", "std"), mean_std(v)), values=v, n=len(evals[l][1]), majority=majority[l])
             for l, v in per_seed.items()}
    m, s = mean_std(avg_seed)
    floors = {"chance": 1 / num_labels if task.metric == "accuracy" else None,
              "majority": sum(majority.values()) / len(majority)}
    return {"languages": langs, "average": {"mean": m, "std": s, "values": avg_seed}, "floors": floors,
            "train_size": len(train), "seeds": list(seeds), "epochs": task.protocol.epochs,
            "final_train_loss": final_loss, "hyperparameters": dataclasses.asdict(cfg)}


# ----------------------------------------------------------------------------- reading a task's data
def _paths(task: Task, root: Path, pattern: str, key: str) -> list[Path]:
    paths = TF.files(root, pattern)
    if not paths:
        raise task.error(f"`{key}: {pattern}` matches no file under {root}; fix the glob or --data-dir")
    return paths


def _by_language(task: Task, root: Path, pattern: str, key: str) -> dict[str, list[Path]]:
    """{lang: files} of a per-language path, restricted to `languages:`; without {lang}: one entry named
    after the task's first listed language (else "all")."""
    if "{lang}" not in pattern:
        return {task.languages[0] if task.languages else "all": _paths(task, root, pattern, key)}
    found = TF.languages_of(root, pattern)
    if not found:
        raise task.error(f"`{key}: {pattern}` matches no file under {root} ({{lang}} = any folder/file name "
                         f"part); fix the path, or pass --data-dir")
    return {l: found[l] for l in _langs(task, list(found))}


def _records(task: Task, path: Path) -> list[D.Record]:
    fmt = task.format
    if fmt in ("tsv", "csv"):
        recs = D.read_table(path, task.columns, fmt=fmt, header=bool(task.header), strip=task.strip,
                            optional=task.optional)
    elif fmt == "jsonl":
        recs = D.read_jsonl(path, task.columns, strip=task.strip, optional=task.optional)
    elif fmt == "conll":
        recs = D.read_conll(path, separator=task.separator, token_column=task.columns["token"],
                            tag_column=task.columns["tag"])
    elif fmt == "conllu":
        recs = D.read_conllu(path, tag_column=task.columns["tag"])
    else:
        raise task.error(f"format {fmt} cannot be read as records")
    if task.type == "token-classification":
        D.check_split(path, recs, [t for r in recs for t in r.values["tags"]])
    elif task.type in ("sequence-classification", "pair-classification"):
        D.check_split(path, recs, [r.values["label"] for r in recs])
    else:
        D.check_split(path, recs)
    return recs


def _select(task: Task, paths: list[Path], split: TF.Split, key: str) -> list[tuple[Path, D.Record]]:
    items = [(p, r) for p in paths for r in _records(task, p)]
    if split.rows is not None:
        items = items[split.rows[0]:split.rows[1]]
        if not items:
            raise task.error(f"`{key}.rows: {_range(split.rows)}` leaves no items of {', '.join(map(str, paths))}; "
                             f"fix the range")
    return items


def _sample(task: Task, items: list) -> list:
    n = task.protocol.max_train
    if n is None:
        return items
    if task.protocol.train_sample == "random":  # a fixed random subset (files are often sorted by source)
        g = torch.Generator().manual_seed(task.protocol.sample_seed)
        return [items[i] for i in torch.randperm(len(items), generator=g)[:n].tolist()]
    return items[:n]


def _train_items(task: Task, root: Path, langs: Sequence[str]) -> list[tuple[Path, D.Record]]:
    if task.protocol.transfer == "zero-shot":
        return _sample(task, _select(task, _paths(task, root, task.train.path, "train"), task.train, "train"))
    out = []
    for l in langs:  # joint: every language's train, each capped, pooled in language order
        pattern = task.train.path.replace("{lang}", l)
        out += _sample(task, _select(task, _paths(task, root, pattern, "train"), task.train, "train"))
    return out


def _label_set(task: Task, train: list[tuple[Path, D.Record]]) -> tuple[str, ...]:
    if task.labels is not None:
        return task.labels
    key = "tags" if task.type == "token-classification" else "label"
    seen = {v for _, r in train for v in (r.values[key] if key == "tags" else [r.values[key]])}
    return tuple(sorted(seen))


def _unknown(path: Path, line: int, value: str, labels: Sequence[str]) -> D.EvalDataError:
    return D.EvalDataError(f"{path}:{line}: unknown label {value!r}; expected one of {', '.join(labels)} (fix the "
                           f"line, or list the label under `labels:` in the task file)")


def _examples(task: Task, items: list[tuple[Path, D.Record]], labels: Sequence[str]) -> list:
    """Records → Example / TaggedSentence / ChoiceExample with label ids from `labels`."""
    index = {l: i for i, l in enumerate(labels)}
    out = []
    for path, r in items:
        v = r.values
        if task.type == "token-classification":
            ids = []
            for tag, line in zip(v["tags"], r.tag_lines):
                if tag not in index:
                    raise _unknown(path, line, tag, labels)
                ids.append(index[tag])
            out.append(D.TaggedSentence(tuple(v["tokens"]), tuple(ids)))
        elif task.type == "multiple-choice":
            choices = tuple(v["choices"])
            lab = v["label"]
            if task.labels is not None:  # e.g. labels: [A, B, C, D] for answer letters
                if lab not in index:
                    raise _unknown(path, r.line, lab, labels)
                k = index[lab]
            elif lab.lstrip("-").isdigit():
                k = int(lab)
            else:
                raise D.EvalDataError(f"{path}:{r.line}: label {lab!r} is not a choice index (0-based); list the "
                                      f"label values under `labels:` (in choice order) in the task file")
            if not 0 <= k < len(choices):
                raise D.EvalDataError(f"{path}:{r.line}: label {k} but {len(choices)} choices (0-based index)")
            context = v["context"] + (" " + v["question"] if v.get("question") else "")
            out.append(D.ChoiceExample(context=context, choices=choices, label=k))
        else:
            if v["label"] not in index:
                raise _unknown(path, r.line, v["label"], labels)
            out.append(D.Example(text=v["text"], text_pair=v.get("text_pair"), label=index[v["label"]]))
    if task.type == "multiple-choice" and len({len(e.choices) for e in out}) > 1:
        raise D.EvalDataError(f"{items[0][0]}: questions have different numbers of choices "
                              f"({sorted({len(e.choices) for e in out})}); one task = one number of choices")
    return out


def _encode(ctx: _Ctx, task: Task, examples: list):
    kw = dict(max_len=task.protocol.max_len, cache_dir=ctx.cache)
    if task.type == "token-classification":
        return encode_tagged(ctx.bb, examples, **kw), [s.tags for s in examples]
    if task.type == "multiple-choice":
        return encode_choices(ctx.bb, examples, **kw), [e.label for e in examples]
    return encode_examples(ctx.bb, examples, **kw), [e.label for e in examples]


def _scorer(task: Task, labels: Sequence[str]) -> Callable[[list, list], float]:
    if task.metric == "span-f1":
        def names(sents: list) -> list[list[str]]:
            return [[labels[t] for t in s] for s in sents]

        return lambda pred, gold: span_f1(names(pred), names(gold))
    if task.metric == "macro-f1":
        if task.type == "token-classification":
            return lambda pred, gold: macro_f1([p for s in pred for p in s], [g for s in gold for g in s])
        return macro_f1
    return token_accuracy if task.type == "token-classification" else accuracy


def _describe(task: Task, **extra) -> str | None:
    """The task's `description:` with {protocol field} placeholders filled (None → "all")."""
    if not task.description:
        return None
    values = {k: ("all" if v is None else v) for k, v in dataclasses.asdict(task.protocol).items()}
    try:
        return task.description.format_map({**values, **extra})
    except (KeyError, ValueError, IndexError):
        return task.description  # braces that are not placeholders: the text as written


def _range(r: tuple[int, int | None] | None) -> str:
    return "[]" if r is None else f"[{r[0]}, {'null' if r[1] is None else r[1]}]"


def _span(split: TF.Split) -> str:
    r = split.rows or split.paragraphs
    if r is None:
        return split.path
    unit = "rows" if split.rows else "paragraphs"
    return f"{split.path} {unit} {r[0]}-{r[1] - 1}" if r[1] is not None else f"{split.path} {unit} {r[0]}+"


def _protocol_text(task: Task) -> str:
    text = _describe(task)
    if text:
        return text
    p = task.protocol
    how = {"zero-shot": f"fine-tune on {_span(task.train)}, zero-shot on {_span(task.eval)}",
           "joint": f"fine-tune on {_span(task.train)} of every language together, test {_span(task.eval)}",
           "in-language": f"fine-tune on {_span(task.train)} per language, test {_span(task.eval)}"}[p.transfer]
    caps = (f", first {p.max_train} training items" if p.max_train else "") + \
        (f", first {p.max_eval} test items per language" if p.max_eval else "")
    return f"{how}; {p.epochs:g} epochs, LR {p.lr:g}, max length {p.max_len}{caps}"


# ----------------------------------------------------------------------------- task types
def run_classification(ctx: _Ctx, task: Task) -> dict:
    """sequence-, pair-, token-classification and multiple-choice: fine-tune, score per language."""
    root = _root(ctx, task)
    evals_files = _by_language(task, root, task.eval.path, "eval")
    langs = list(evals_files)
    train_items = _train_items(task, root, langs)
    labels = _label_set(task, train_items)
    if task.type != "multiple-choice" and len(labels) < 2:
        raise task.error(f"the label set {list(labels)} has fewer than two labels; list them under `labels:`")
    train_ex = _examples(task, train_items, labels)  # a stray label: the training file is named first
    eval_ex = {}
    for l, paths in evals_files.items():
        ex = _examples(task, _cap(_select(task, paths, task.eval, "eval"), task.protocol.max_eval), labels)
        eval_ex[l] = ex
    score = _scorer(task, labels)
    num = len(labels)
    head = {"metric": TF.METRIC_NAMES[task.metric], "protocol": _protocol_text(task)}
    if task.type != "multiple-choice":
        head["labels"] = list(labels)  # id order of the head (listed, or collected from train and sorted)
    if task.protocol.transfer != "in-language":
        train = _encode(ctx, task, train_ex)[0]
        evals = {l: _encode(ctx, task, ex) for l, ex in eval_ex.items()}
        return {**head, **_finetune_eval(ctx, task, train, evals, num, score)}
    # in-language: one fine-tune per language on its own train split; averages over languages per seed
    per, sizes = {}, {}
    for l in langs:
        items = _train_items(task, root, [l])
        train = _encode(ctx, task, _examples(task, items, labels))[0]
        per[l] = _finetune_eval(ctx, task, train, {l: _encode(ctx, task, eval_ex[l])}, num, score)
        sizes[l] = len(train)
    seeds = _seeds(ctx, task)
    avg = [sum(per[l]["languages"][l]["values"][i] for l in langs) / len(langs) for i in range(len(seeds))]
    m, s = mean_std(avg)
    first = per[langs[0]]
    floors = {"chance": first["floors"]["chance"],
              "majority": sum(per[l]["floors"]["majority"] for l in langs) / len(langs)}
    return {**head, "languages": {l: per[l]["languages"][l] for l in langs}, "floors": floors,
            "average": {"mean": m, "std": s, "values": avg}, "train_size": sizes, "seeds": list(seeds),
            "epochs": task.protocol.epochs, "final_train_loss": {l: per[l]["final_train_loss"] for l in langs},
            "hyperparameters": first["hyperparameters"]}


def _retrieval_result(res: dict[str, dict[str, float]], metric: str, protocol: str) -> dict:
    langs = {l: {"mean": (v["xx2en"] + v["en2xx"]) / 2, "std": 0.0, **v} for l, v in res.items()}
    n = max(1, len(res))
    xx2en = sum(v["xx2en"] for v in res.values()) / n
    en2xx = sum(v["en2xx"] for v in res.values()) / n
    chance = sum(1 / v["n"] for v in res.values() if v.get("n")) / n  # a random pick among n candidates
    return {"metric": metric, "protocol": protocol, "languages": langs,
            "average": {"mean": (xx2en + en2xx) / 2, "std": 0.0, "xx2en": xx2en, "en2xx": en2xx},
            "floors": {"chance": chance, "majority": None}}


def run_bitext(ctx: _Ctx, task: Task) -> dict:
    """bitext-retrieval: source (per language) ↔ target (pivot) by mean-pooled cosine nearest neighbour;
    text files align by line, tables / jsonl by line or by an `id` column, squad files question → the
    target file's paragraphs."""
    from mmbert.eval.retrieval import bitext, embed, question_to_paragraph

    root, p = _root(ctx, task), task.protocol
    sources = _by_language(task, root, task.source.path, "source")
    fixed_target = "{lang}" not in task.target.path

    def target_files(l: str) -> list[Path]:
        return _paths(task, root, task.target.path.replace("{lang}", l), "target")

    if task.format == "squad":  # question (every language) → paragraph of the pivot file
        if not fixed_target:
            raise task.error("squad retrieval maps questions to the paragraphs of ONE target file: drop {lang} "
                             "from `target:`")
        pivot = [q for f in target_files("") for q in D.load_squad(f, answers_required=False)]
        paragraphs = list(dict.fromkeys(q.context for q in pivot))
        where = {c: i for i, c in enumerate(paragraphs)}
        target = torch.tensor([where[q.context] for q in pivot])
        para_emb = embed(ctx.bb, paragraphs, max_len=p.max_len)
        res = {}
        for l, files in tqdm(sources.items(), desc=task.name, disable=not ctx.progress, leave=False):
            qa = [q for f in files for q in D.load_squad(f, answers_required=False)]
            if len(qa) != len(pivot):
                raise D.EvalDataError(f"{files[0]}: {len(qa)} questions, the target {target_files('')[0].name} has "
                                      f"{len(pivot)}; question i of every file must belong to paragraph i's pivot "
                                      f"(parallel files)")
            n = p.max_eval or len(qa)
            res[l] = {"q2p": question_to_paragraph(ctx.bb, [q.question for q in qa[:n]], para_emb, target[:n],
                                                   max_len=p.max_len), "n": len(qa[:n])}
        langs = {l: {"mean": v["q2p"], "std": 0.0, **v} for l, v in res.items()}
        return {"metric": "accuracy@1 question → target paragraph", "languages": langs,
                "protocol": _describe(task) or f"zero-shot, mean-pooled; questions of {task.source.path} against "
                                                f"the {len(paragraphs)} paragraphs of {task.target.path}",
                "average": {"mean": sum(v["q2p"] for v in res.values()) / max(1, len(res)), "std": 0.0},
                "floors": {"chance": 1 / len(paragraphs), "majority": None}}  # a random paragraph

    def texts(files: list[Path]) -> list[tuple[str | None, str]]:
        if task.format == "text":
            return [(None, t) for f in files for t in D.read_lines(f)]
        return [(r.values.get("id"), r.values["text"]) for f in files for r in _records(task, f)]

    by_id = "id" in task.columns
    pivot_texts = texts(target_files("")) if fixed_target else None
    cache: dict[tuple, torch.Tensor] = {}
    res = {}
    for l, files in tqdm(sources.items(), desc=task.name, disable=not ctx.progress, leave=False):
        tfiles = target_files(l)
        if fixed_target and [f.resolve() for f in files] == [f.resolve() for f in tfiles]:
            continue  # the pivot language itself
        src, tgt = texts(files), (pivot_texts if fixed_target else texts(tfiles))
        if by_id:  # keep the source rows whose id the target has, in source order
            pivot = {i: t for i, t in tgt}
            pairs = [(t, pivot[i]) for i, t in src if i in pivot]
            key = tuple(i for i, _ in src if i in pivot)
        else:
            if len(src) != len(tgt):
                n = min(len(src), len(tgt)) + 1
                raise D.EvalDataError(f"{files[0] if len(src) < len(tgt) else tfiles[0]}:{n}: aligned files differ "
                                      f"in length ({len(src)} vs {len(tgt)} items); the shorter one ends here")
            pairs = [(a, b) for (_, a), (_, b) in zip(src, tgt)]
            key = None
        pairs = _cap(pairs, p.max_eval)
        if not pairs:
            raise D.EvalDataError(f"{files[0]}: no pair aligned with {tfiles[0]}; check the `id` column / the files")
        if key is not None and fixed_target:  # every language shares the pivot: embed it once per id set
            key = key[:len(pairs)]
            if key not in cache:
                cache[key] = embed(ctx.bb, [b for _, b in pairs], max_len=p.max_len)
            res[l] = bitext(ctx.bb, [a for a, _ in pairs], cache[key], max_len=p.max_len)
        else:
            res[l] = bitext(ctx.bb, [a for a, _ in pairs], [b for _, b in pairs], max_len=p.max_len)
        res[l]["n"] = len(pairs)  # sample size, and the candidates a random pick chooses among
    if not res:
        raise task.error("no language besides the target itself; check `source:` / `languages:`")
    return _retrieval_result(res, "accuracy@1 (mean of xx→en and en→xx)", _describe(task) or
                             f"zero-shot, mean-pooled, cosine nearest neighbour; {task.source.path} ↔ "
                             f"{task.target.path}")


def run_qa(ctx: _Ctx, task: Task) -> dict:
    """extractive-qa on SQuAD v1.1 files: span head fine-tuned on train, SQuAD EM / F1 per language."""
    from mmbert.eval.qa import MAX_ANSWER_LEN, finetune_qa

    root, p = _root(ctx, task), task.protocol

    def paragraphs(ex: list, split: TF.Split) -> list:
        if split.paragraphs is None:
            return ex
        a, b = split.paragraphs
        return [e for e in ex if e.paragraph >= a and (b is None or e.paragraph < b)]

    evals_files = _by_language(task, root, task.eval.path, "eval")
    langs = list(evals_files)
    train_files = [f for l in (langs if p.transfer != "zero-shot" else [""])
                   for f in _paths(task, root, task.train.path.replace("{lang}", l), "train")]
    full_train = {f: D.load_squad(f) for f in train_files}
    train_ex = _cap([e for f in train_files for e in paragraphs(full_train[f], task.train)], p.max_train)
    if not train_ex:
        raise D.EvalDataError(f"{train_files[0]}: no questions left to fine-tune on after `paragraphs: "
                              f"{_range(task.train.paragraphs)}` / max_train; fix the range")
    pivot = next(iter(full_train.values()))
    tests = {}
    for l, files in evals_files.items():
        ex = [e for f in files for e in D.load_squad(f)]
        if task.parallel and [(e.id, e.paragraph) for e in ex] != [(e.id, e.paragraph) for e in pivot]:
            raise D.EvalDataError(f"{files[0]}: question ids / paragraphs differ from {train_files[0].name}; the "
                                  f"files of a `parallel: true` task must hold the same questions in the same "
                                  f"paragraphs")
        test = _cap(paragraphs(ex, task.eval), p.max_eval)
        if not test:
            raise D.EvalDataError(f"{files[0]}: no questions left to evaluate after `paragraphs: "
                                  f"{_range(task.eval.paragraphs)}`; fix the range")
        tests[l] = test
    stride = p.stride if p.stride is not None else p.max_len // 2
    r = finetune_qa(ctx.bb, train_ex, tests, seeds=_seeds(ctx, task), epochs=p.epochs, max_len=p.max_len,
                    stride=stride, lr=p.lr, batch_size=p.batch_size, cache_dir=ctx.cache, progress=ctx.progress,
                    desc=task.name)
    text = _describe(task, stride=stride) or (f"fine-tune on {_span(task.train)}, test {_span(task.eval)}; span "
                                              f"head, windows of {p.max_len} tokens with stride {stride}, answers ≤ "
                                              f"{MAX_ANSWER_LEN} tokens")
    text += ((f"; first {p.max_train} training questions" if p.max_train is not None else "")
             + (f"; first {p.max_eval} held-out questions per language" if p.max_eval is not None else ""))
    return {"metric": TF.METRIC_NAMES["squad"], "protocol": text, **r}


def run_mlm(ctx: _Ctx, task: Task) -> dict:
    from mmbert.eval.backbone import load_mlm_model
    from mmbert.eval.mlm import evaluate_mlm, spread_subset

    if ctx.shards is None:
        raise _Skip("no --shards given (held-out token shards made with the model's tokenizer)")
    model = load_mlm_model(ctx.model_path, device=ctx.bb.device)
    p = task.protocol
    langs = list(task.languages) if task.languages is not None else None
    if langs is None and p.max_languages is not None:
        from mmbert.data.shards import ShardIndex

        index = ShardIndex.load(ctx.shards)
        held = {l: index.tokens(l, "train") if index.has(l, "train") else 0
                for l in index.languages if index.has(l, "heldout")}
        langs = spread_subset(held, p.max_languages)
    res = evaluate_mlm(model, ctx.shards, langs, max_tokens_per_lang=p.max_tokens or 8192,
                       progress=ctx.progress)
    langs = {l: {"mean": v["accuracy"], "std": 0.0, **v} for l, v in res["languages"].items()}
    return {"metric": "masked-token accuracy (15% masking, seed 0)", "protocol": _describe(task) or "held-out shards",
            "languages": langs, "tiers": res["tiers"],
            "average": {"mean": res["macro"]["accuracy"], "std": 0.0, "loss": res["macro"]["loss"]}}


RUNNERS: dict[str, Callable[[_Ctx, Task], dict]] = {
    "sequence-classification": run_classification,
    "pair-classification": run_classification,
    "token-classification": run_classification,
    "multiple-choice": run_classification,
    "extractive-qa": run_qa,
    "bitext-retrieval": run_bitext,
    "mlm": run_mlm,
}


# ----------------------------------------------------------------------------- the runner
def _select_tasks(suite: str, tasks: Sequence[str] | None, task_specs: Sequence | None,
                  task_file: str | os.PathLike | Sequence[str | os.PathLike] | None,
                  data_dir: str | os.PathLike | None) -> tuple[list, str]:
    """The tasks run_suite runs (task files, else task_specs, else the suite; then only `tasks`), and
    the suite's name in the results (the task files' paths when they are given)."""
    if task_file is not None:
        files = [task_file] if isinstance(task_file, (str, os.PathLike)) else list(task_file)
        specs: list = [t for f in files for t in TF.load_task_file(f, data_dir=data_dir)]
        suite = ",".join(str(f) for f in files)
    elif task_specs is not None:
        specs = [s.to_task() if isinstance(s, TaskSpec) else s for s in task_specs]
    else:
        specs = suite_tasks(suite)
    if tasks is not None:
        unknown = set(tasks) - {s.name for s in specs}
        if unknown:
            raise ValueError(f"unknown eval task(s) {sorted(unknown)}; choose from {sorted(s.name for s in specs)}")
        specs = [s for s in specs if s.name in tasks]
    return specs, suite


def _check_shards_tokenizer(shards: str | os.PathLike, tp: Path) -> None:
    """Raise unless the shards were tokenized by the tokenizer at `tp` (a directory or tokenizer.json)."""
    from mmbert.data.shards import ShardIndex, check_tokenizer

    check_tokenizer(ShardIndex.load(shards), tp / "tokenizer.json" if tp.is_dir() else tp,
                    role="the model's tokenizer")


def _run_task(ctx: _Ctx, spec: Task | InvalidTask, log: Callable[[str], None]) -> dict:
    """One task's result: its runner's, or {"skipped": why} / {"error": message} (logged)."""
    if isinstance(spec, InvalidTask):
        log(f"error: {spec.error}")
        return {"error": spec.error}
    if spec.requires is not None and not (_root(ctx, spec) / spec.requires).is_dir():
        if _root(ctx, spec).is_dir():
            log(f"{spec.name}: skipped, {_root(ctx, spec) / spec.requires} not found")
        return {"skipped": f"data folder {spec.requires}/ absent"}
    try:
        return RUNNERS[spec.type](ctx, spec)
    except _Skip as e:
        log(f"{spec.name}: skipped, {e}")
        return {"skipped": str(e)}
    except (D.EvalDataError, D.EvalDataMissing, TaskError) as e:
        msg = str(e) if str(e).startswith("task ") else f"task {spec.name!r}: {e}"
        log(f"error: {msg}")
        return {"error": msg}


def run_suite(model_path: str | os.PathLike, suite: str = "quick", *, data_dir: str | os.PathLike | None = None,
              out_dir: str | os.PathLike = "out/eval", seeds: Sequence[int] | None = None, seed: int = 0,
              num_seeds: int | None = None,
              shards: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
              task_specs: Sequence[TaskSpec | Task | InvalidTask] | None = None,
              task_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None, device: str | None = None,
              tokenizer: str | os.PathLike | None = None, progress: bool = True, plots: bool = True) -> dict:
    """Run a suite (or task files) on one model directory; write results.json, results.md, plots/; return
    the results.

    seeds: fine-tuning seeds (default: `num_seeds` of them from `seed` on: 1 for quick and task files,
    3 for full); results are mean ± std; a task's own `protocol.seeds` wins. tasks: run only these task names.
    task_file: one or more task files (docs/eval.md) run instead of the suite; task_specs: Task /
    TaskSpec objects run instead of the suite. tokenizer: tokenizer directory for a model directory
    that has none (e.g. a training checkpoint).
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    specs, suite = _select_tasks(suite, tasks, task_specs, task_file, data_dir)
    if num_seeds is None:
        num_seeds = 3 if suite == "full" else 1
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be ≥ 1, got {num_seeds}")
    seeds = tuple(seeds) if seeds is not None else tuple(range(seed, seed + num_seeds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shards is not None:  # the MLM task reads token ids: they must be the model tokenizer's
        _check_shards_tokenizer(shards, Path(tokenizer or model_path))
    if str(device) == "cpu":
        ThreadPolicy()  # threads = the cores other processes leave free (at most the current count)
    bb = load_backbone(model_path, device=device, tokenizer=tokenizer)
    root = D.resolve_data_dir(data_dir)
    log = lambda msg: tqdm.write(msg, file=sys.stderr) if progress else None  # noqa: E731
    if not root.is_dir() and any(isinstance(s, Task) and s.base is None and s.type != "mlm" for s in specs):
        log(f"eval data directory {root} not found: data tasks skipped "
            f"(pass --data-dir or set ${D.ENV_VAR})")
    ctx = _Ctx(bb=bb, root=root, seeds=seeds, cache=out / "cache", progress=progress,
               model_path=Path(model_path), shards=Path(shards) if shards else None)
    results: dict[str, Any] = {
        "model": str(model_path), "backbone": bb.name, "suite": suite, "seeds": list(seeds),
        "data_dir": str(root), "device": str(device), "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": {}}
    for spec in tqdm(specs, desc=f"eval {suite}", disable=not progress):
        t0, c0 = time.perf_counter(), time.process_time()
        r = _run_task(ctx, spec, log)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        # CPU time of this process (all its threads): on a shared machine, the wall clock on an idle one
        # lies between cpu_seconds / threads and cpu_seconds
        r["cpu_seconds"] = round(time.process_time() - c0, 1)
        results["tasks"][spec.name] = r
        write_json(out / "results.json", results)  # after every task: nothing finished is lost
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    results["cpu_seconds"] = round(time.process_time() - c_start, 1)
    results["torch_threads"] = torch.get_num_threads()
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", format_markdown(results))
    if plots:
        plot_results(results, out / "plots")
    return results


# ----------------------------------------------------------------------------- reporting
def _fmt(m: float | None, s: float | None = None) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if s else f"{100 * m:.1f}"


def task_failure(r: dict) -> tuple[str, str] | None:
    """("skipped", why) or ("error", message) for a task result without scores; None for a scored one."""
    if "skipped" not in r and "error" not in r:
        return None
    return ("skipped" if "skipped" in r else "error"), r.get("skipped") or r.get("error")


def format_markdown(results: dict) -> str:
    """Summary table (one row per task) + one per-language table per task."""
    lines = [f"# Eval `{results['suite']}` — {results['model']}", "",
             f"backbone {results['backbone']}, seeds {results['seeds']}, device {results['device']}, "
             f"torch {results['torch']}, data {results['data_dir']}, started {results['started']}, "
             f"total {results.get('seconds', 0):.0f} s wall, {results.get('cpu_seconds', 0):.0f} s CPU", "",
             "| task | metric | average (×100, mean ± std over seeds) | languages | protocol | seconds | CPU s |",
             "|---|---|---:|---:|---|---:|---:|"]
    for name, r in results["tasks"].items():
        if failed := task_failure(r):
            kind, why = failed
            lines.append(f"| {name} | {'ERROR' if kind == 'error' else kind} | – | – | "
                         f"{why} | {r['seconds']} | {r['cpu_seconds']} |")
            continue
        a = r["average"]
        lines.append(f"| {name} | {r['metric']} | {_fmt(a['mean'], a['std'])} | {len(r['languages'])} | "
                     f"{r['protocol']} | {r['seconds']} | {r['cpu_seconds']} |")
    for name, r in results["tasks"].items():
        if "languages" not in r:
            continue
        lines += ["", f"## {name}", ""]
        if "tiers" in r:
            lines += ["| tier | languages | loss | accuracy |", "|---|---:|---:|---:|"]
            lines += [f"| {t} | {v['languages']} | {v['loss']:.3f} | {_fmt(v['accuracy'])} |"
                      for t, v in r["tiers"].items()]
            lines.append("")
        extra = "xx2en" in next(iter(r["languages"].values()), {})
        em = "exact_match" in next(iter(r["languages"].values()), {})  # extractive QA: F1 + exact match
        lines.append("| language | score (×100) |" + (" xx→en | en→xx |" if extra else "")
                     + (" exact match |" if em else ""))
        lines.append("|---|---:|" + ("---:|---:|" if extra else "") + ("---:|" if em else ""))
        for l, v in sorted(r["languages"].items()):
            row = f"| {l} | {_fmt(v['mean'], v['std'])} |"
            if extra:
                row += f" {_fmt(v['xx2en'])} | {_fmt(v['en2xx'])} |"
            if em:
                row += f" {_fmt(v['exact_match'], v['exact_match_std'])} |"
            lines.append(row)
        if em:
            lines += [f"| average | {_fmt(r['average']['mean'], r['average']['std'])} | "
                      f"{_fmt(r['average']['exact_match'], r['average']['exact_match_std'])} |"]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, plot_dir: str | os.PathLike) -> list[Path]:
    """One bar chart per task: per-language score (sorted), std error bars, the average as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, r in results["tasks"].items():
        if "languages" not in r or not r["languages"]:
            continue
        items = sorted(r["languages"].items(), key=lambda kv: -(kv[1]["mean"] or 0))
        labels = [k for k, _ in items]
        means = [100 * (v["mean"] or 0) for _, v in items]
        stds = [100 * (v.get("std") or 0) for _, v in items]
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(labels) + 2), 3.6))
        ax.bar(range(len(labels)), means, yerr=stds if any(stds) else None, color="#4c72b0")
        ax.axhline(100 * (r["average"]["mean"] or 0), color="#c44e52", lw=1, label="average")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6 if len(labels) > 40 else 8)
        ax.set_ylabel(f"{r['metric']} ×100", fontsize=8)
        ax.set_title(f"{name} — {results['model']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = atomic_write(plot_dir / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        written.append(p)
    return written
