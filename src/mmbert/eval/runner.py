"""One runner for the whole harness: `mmbert eval --model PATH --suite quick|full`.

    mmbert eval --model out/ckpt --suite quick --out out/eval/ckpt            # ≤ 5 min, tiny preset, CPU
    mmbert eval --model path/to/xlm-r --suite full --out out/eval/xlmr --num-seeds 3
    python -c "from mmbert.eval.runner import run_suite; run_suite('out/ckpt', 'quick', out_dir='out/eval/x')"

Writes <out>/results.json, <out>/results.md (summary + per-language tables) and <out>/plots/<task>.png,
and caches tokenized data under <out>/cache/<tokenizer hash>/. Tasks, splits and metrics are in
docs/eval.md; the suites are data (`suite_tasks`), `quick` derived from `full` by shrinking a few
fields. A task whose data folder is absent is skipped with one message; a malformed data line stops
that task with its file and line number (recorded in the results, other tasks still run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from mmbert.eval import data as D
from mmbert.eval.backbone import Backbone, load_backbone
from mmbert.eval.finetune import (EncodedSet, FinetuneConfig, encode_examples, encode_tagged, finetune,
                                  predict)
from mmbert.eval.metrics import accuracy, mean_std, span_f1, token_accuracy
from mmbert.utils import atomic_write


# ----------------------------------------------------------------------------- suites as data
@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite. `languages=None` = every language present; caps are per language."""

    name: str  # a key of TASKS (below)
    languages: tuple[str, ...] | None = None
    max_train: int | None = None
    max_eval: int | None = None
    epochs: float = 3.0
    max_len: int = 128
    train_rows: int | None = None  # XNLI / PAWS-X: English dev rows [0, train_rows) train, the rest test
    # (xquad: English paragraphs [0, train_rows) train, default 120)
    max_languages: int | None = None  # mlm: at most this many languages, spread over the size ranking


# Representative subsets for the quick suite: high- and low-resource, several scripts.
QUICK_SIB200 = ("eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab",
                "hin_Deva", "ind_Latn", "swh_Latn", "tur_Latn", "yor_Latn")
QUICK_TATOEBA = ("deu", "fra", "spa", "rus", "cmn", "ara", "hin", "ind", "swh", "tur")


def suite_tasks(suite: str) -> list[TaskSpec]:
    """The tasks of a suite. `full` = every task of the issue; `quick` = a subset of it, shrunk."""
    full = [
        TaskSpec("mlm"),
        TaskSpec("sib200", epochs=4),
        TaskSpec("sib200-retrieval"),
        TaskSpec("tatoeba"),
        TaskSpec("xnli", epochs=2, train_rows=2000),
        TaskSpec("pawsx", epochs=2, train_rows=1500),
        TaskSpec("wikiann", max_train=5000, max_eval=500, epochs=1),
        TaskSpec("udpos", max_eval=500, epochs=2),
        TaskSpec("sst2", max_train=10000, epochs=1),
        TaskSpec("nusax", epochs=2),
        TaskSpec("xquad-retrieval", max_len=256),
        # the first 250 of the 558 held-out questions per language: keeps it ≲ 3 CPU-minutes per seed (tiny)
        TaskSpec("xquad", epochs=2, max_len=256, max_eval=250),
    ]
    if suite == "full":
        return full
    if suite == "quick":
        by = {t.name: t for t in full}
        return [
            dataclasses.replace(by["mlm"], max_languages=32, max_eval=4096),
            dataclasses.replace(by["sib200"], languages=QUICK_SIB200),
            dataclasses.replace(by["sib200-retrieval"], languages=QUICK_SIB200),
            dataclasses.replace(by["tatoeba"], languages=QUICK_TATOEBA, max_eval=300),
            dataclasses.replace(by["sst2"], max_train=2000),
        ]
    raise ValueError(f"unknown eval suite {suite!r}; use 'quick' or 'full'")


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
    shards_root: Path | None


def _cap(items: list, n: int | None) -> list:
    return items if n is None else items[:n]


def _langs(spec: TaskSpec, present: Sequence[str]) -> list[str]:
    if spec.languages is None:
        return list(present)
    langs = [l for l in spec.languages if l in present]  # a suite's subset, as far as the data has it
    if not langs:
        raise D.EvalDataMissing(f"{spec.name}: none of the languages {list(spec.languages)} is in the data "
                                f"directory; check --data-dir")
    return langs


def _finetune_eval(ctx: _Ctx, spec: TaskSpec, train: EncodedSet, evals: dict[str, tuple[EncodedSet, list]],
                   num_labels: int, score: Callable[[list, list], float]) -> dict:
    """Fine-tune once per seed, score every eval language; mean ± std over seeds."""
    cfg = FinetuneConfig(epochs=spec.epochs, max_len=spec.max_len)
    per_seed: dict[str, list[float]] = {l: [] for l in evals}
    avg_seed, final_loss = [], []
    for seed in ctx.seeds:
        model, losses = finetune(ctx.bb, train, num_labels=num_labels, cfg=cfg, seed=seed,
                                 progress=ctx.progress, desc=f"{spec.name} seed {seed}")
        final_loss.append(sum(losses[-10:]) / len(losses[-10:]))
        vals = []
        for lang, (enc, gold) in tqdm(evals.items(), desc=f"{spec.name} eval", disable=not ctx.progress,
                                      leave=False):
            v = score(predict(model, enc, pad_id=ctx.bb.pad_id, batch_size=cfg.eval_batch_size), gold)
            per_seed[lang].append(v)
            vals.append(v)
        avg_seed.append(sum(vals) / len(vals))
        del model
    langs = {l: dict(zip(("mean", "std"), mean_std(v)), values=v) for l, v in per_seed.items()}
    m, s = mean_std(avg_seed)
    return {"languages": langs, "average": {"mean": m, "std": s, "values": avg_seed},
            "train_size": len(train), "seeds": list(ctx.seeds), "epochs": spec.epochs,
            "final_train_loss": final_loss, "hyperparameters": dataclasses.asdict(cfg)}


def _seq(ctx, spec, examples):
    return encode_examples(ctx.bb, examples, max_len=spec.max_len, cache_dir=ctx.cache)


def _tag(ctx, spec, sents):
    return encode_tagged(ctx.bb, sents, max_len=spec.max_len, cache_dir=ctx.cache)


def _gold(examples):
    return [e.label for e in examples]


# ----------------------------------------------------------------------------- tasks
def task_sib200(ctx: _Ctx, spec: TaskSpec) -> dict:
    langs = _langs(spec, D.sib200_languages(ctx.root))
    train = _cap(D.load_sib200(ctx.root, "eng_Latn", "train"), spec.max_train)
    evals = {}
    for l in langs:
        ex = _cap(D.load_sib200(ctx.root, l, "test"), spec.max_eval)
        evals[l] = (_seq(ctx, spec, ex), _gold(ex))
    r = _finetune_eval(ctx, spec, _seq(ctx, spec, train), evals, len(D.SIB200_LABELS), accuracy)
    return {"metric": "accuracy", "protocol": "fine-tune on eng_Latn train, zero-shot test per language", **r}


def _pair_task(ctx, spec, langs_fn, load_fn, labels) -> dict:
    """XNLI / PAWS-X: rows are parallel across languages; English rows [0, n_train) train, the
    remaining row ids are the test set in EVERY language (no translation of a training row is tested)."""
    langs = _langs(spec, langs_fn(ctx.root))
    en = load_fn(ctx.root, "en")
    n_train = spec.train_rows if spec.train_rows is not None else len(en) * 4 // 5
    train = _cap(en[:n_train], spec.max_train)
    evals = {}
    for l in langs:
        ex = _cap(load_fn(ctx.root, l)[n_train:], spec.max_eval)
        evals[l] = (_seq(ctx, spec, ex), _gold(ex))
    r = _finetune_eval(ctx, spec, _seq(ctx, spec, train), evals, len(labels), accuracy)
    return {"metric": "accuracy",
            "protocol": f"fine-tune on English dev rows 0-{n_train - 1}, test rows {n_train}+ in every language",
            **r}


def task_xnli(ctx, spec):
    return _pair_task(ctx, spec, D.xnli_languages, D.load_xnli, D.XNLI_LABELS)


def task_pawsx(ctx, spec):
    return _pair_task(ctx, spec, D.pawsx_languages, D.load_pawsx, D.PAWSX_LABELS)


def task_wikiann(ctx, spec):
    langs = _langs(spec, D.wikiann_languages(ctx.root))
    train = _cap(D.load_wikiann(ctx.root, "en", "train"), spec.max_train)
    evals = {}
    for l in langs:
        sents = _cap(D.load_wikiann(ctx.root, l, "dev"), spec.max_eval)
        evals[l] = (_tag(ctx, spec, sents), [s.tags for s in sents])

    def f1(pred, gold):
        names = D.WIKIANN_TAGS
        return span_f1([[names[t] for t in s] for s in pred], [[names[t] for t in s] for s in gold])

    r = _finetune_eval(ctx, spec, _tag(ctx, spec, train), evals, len(D.WIKIANN_TAGS), f1)
    return {"metric": "span-F1 (seqeval)", "protocol": "fine-tune on English train, dev per language", **r}


def task_udpos(ctx, spec):
    banks = D.ud_treebanks(ctx.root)
    if "UD_English-EWT" not in banks or "dev" not in banks["UD_English-EWT"]:
        raise D.EvalDataMissing("udpos: ud/UD_English-EWT/*-dev.conllu (the training set) is missing")
    names = _langs(spec, [b for b in banks if "test" in banks[b]])
    train = _cap(D.load_conllu(banks["UD_English-EWT"]["dev"]), spec.max_train)
    evals = {}
    for b in names:
        sents = _cap(D.load_conllu(banks[b]["test"]), spec.max_eval)
        evals[b.removeprefix("UD_")] = (_tag(ctx, spec, sents), [s.tags for s in sents])
    r = _finetune_eval(ctx, spec, _tag(ctx, spec, train), evals, len(D.UPOS_TAGS), token_accuracy)
    return {"metric": "UPOS accuracy", "protocol": "fine-tune on UD_English-EWT dev, test per treebank", **r}


def task_sst2(ctx, spec):
    train = D.load_sst2(ctx.root, "train")
    if spec.max_train is not None:  # a fixed random subset (the file is sorted by phrase source)
        g = torch.Generator().manual_seed(1234)
        train = [train[i] for i in torch.randperm(len(train), generator=g)[:spec.max_train].tolist()]
    test = _cap(D.load_sst2(ctx.root, "test"), spec.max_eval)
    r = _finetune_eval(ctx, spec, _seq(ctx, spec, train), {"en": (_seq(ctx, spec, test), _gold(test))},
                       len(D.SST2_LABELS), accuracy)
    return {"metric": "accuracy", "protocol": "fine-tune on train (subset), test = labelled GLUE dev", **r}


def task_nusax(ctx, spec):
    langs = _langs(spec, D.nusax_languages(ctx.root))
    train = [e for l in langs for e in _cap(D.load_nusax(ctx.root, l, "train"), spec.max_train)]
    evals = {}
    for l in langs:
        ex = _cap(D.load_nusax(ctx.root, l, "test"), spec.max_eval)
        evals[l] = (_seq(ctx, spec, ex), _gold(ex))
    r = _finetune_eval(ctx, spec, _seq(ctx, spec, train), evals, len(D.NUSAX_LABELS), accuracy)
    return {"metric": "accuracy", "protocol": "fine-tune on all 12 languages' train together, test per language",
            **r}


def _retrieval_result(res: dict[str, dict[str, float]], protocol: str) -> dict:
    langs = {l: {"mean": (v["xx2en"] + v["en2xx"]) / 2, "std": 0.0, **v} for l, v in res.items()}
    n = max(1, len(res))
    xx2en = sum(v["xx2en"] for v in res.values()) / n
    en2xx = sum(v["en2xx"] for v in res.values()) / n
    return {"metric": "accuracy@1 (mean of xx→en and en→xx)", "protocol": protocol, "languages": langs,
            "average": {"mean": (xx2en + en2xx) / 2, "std": 0.0, "xx2en": xx2en, "en2xx": en2xx}}


def task_tatoeba(ctx, spec):
    from mmbert.eval.retrieval import tatoeba

    langs = _langs(spec, D.tatoeba_languages(ctx.root))
    res = tatoeba(ctx.bb, ctx.root, languages=langs, max_pairs=spec.max_eval, max_len=spec.max_len,
                  progress=ctx.progress)
    return _retrieval_result(res, "zero-shot, mean-pooled, cosine nearest neighbour among "
                                  f"{spec.max_eval or 1000} pairs")


def task_sib200_retrieval(ctx, spec):
    from mmbert.eval.retrieval import sib200_retrieval

    langs = _langs(spec, D.sib200_languages(ctx.root))
    res = sib200_retrieval(ctx.bb, ctx.root, languages=langs, max_len=spec.max_len, progress=ctx.progress)
    return _retrieval_result(res, "zero-shot, mean-pooled, test sentences aligned with eng_Latn by index_id")


def task_xquad_retrieval(ctx, spec):
    from mmbert.eval.retrieval import xquad_retrieval

    langs = _langs(spec, D.xquad_languages(ctx.root))
    res = xquad_retrieval(ctx.bb, ctx.root, languages=langs, max_len=spec.max_len, progress=ctx.progress)
    langs_out = {l: {"mean": v["q2p"], "std": 0.0, **v} for l, v in res.items()}
    return {"metric": "accuracy@1 question → English paragraph", "languages": langs_out,
            "protocol": "zero-shot, mean-pooled; each language's questions against the 240 English paragraphs",
            "average": {"mean": sum(v["q2p"] for v in res.values()) / max(1, len(res)), "std": 0.0}}


def task_xquad(ctx, spec):
    from mmbert.eval.qa import TRAIN_PARAGRAPHS, xquad_qa

    return xquad_qa(ctx.bb, ctx.root, languages=_langs(spec, D.xquad_languages(ctx.root)), seeds=ctx.seeds,
                    epochs=spec.epochs, max_len=spec.max_len, train_paragraphs=spec.train_rows or TRAIN_PARAGRAPHS,
                    max_train=spec.max_train, max_eval=spec.max_eval, cache_dir=ctx.cache, progress=ctx.progress)


def task_mlm(ctx, spec):
    from mmbert.eval.backbone import load_mlm_model
    from mmbert.eval.mlm import evaluate_mlm, spread_subset

    if ctx.shards_root is None:
        raise _Skip("no --shards given (held-out token shards made with the model's tokenizer)")
    model = load_mlm_model(ctx.model_path, device=ctx.bb.device)
    langs = list(spec.languages) if spec.languages is not None else None
    if langs is None and spec.max_languages is not None:
        from mmbert.data.shards import ShardIndex

        index = ShardIndex.load(ctx.shards_root)
        held = {l: index.tokens(l, "train") if index.has(l, "train") else 0
                for l in index.languages if index.has(l, "heldout")}
        langs = spread_subset(held, spec.max_languages)
    res = evaluate_mlm(model, ctx.shards_root, langs, max_tokens_per_lang=spec.max_eval or 8192,
                       progress=ctx.progress)
    langs = {l: {"mean": v["accuracy"], "std": 0.0, **v} for l, v in res["languages"].items()}
    return {"metric": "masked-token accuracy (15% masking, seed 0)", "protocol": "held-out shards",
            "languages": langs, "tiers": res["tiers"],
            "average": {"mean": res["macro"]["accuracy"], "std": 0.0, "loss": res["macro"]["loss"]}}


class _Skip(Exception):
    pass


TASKS: dict[str, tuple[Callable[[_Ctx, TaskSpec], dict], str | None]] = {
    # name: (runner, data folder it needs)
    "mlm": (task_mlm, None),
    "sib200": (task_sib200, "sib200"),
    "sib200-retrieval": (task_sib200_retrieval, "sib200"),
    "tatoeba": (task_tatoeba, "tatoeba"),
    "xnli": (task_xnli, "xnli"),
    "pawsx": (task_pawsx, "pawsx"),
    "wikiann": (task_wikiann, "wikiann"),
    "udpos": (task_udpos, "ud"),
    "sst2": (task_sst2, "glue/sst2"),
    "nusax": (task_nusax, "nusax"),
    "xquad-retrieval": (task_xquad_retrieval, "xquad"),
    "xquad": (task_xquad, "xquad"),
}


# ----------------------------------------------------------------------------- the runner
def run_suite(model_path: str | os.PathLike, suite: str = "quick", *, data_dir: str | os.PathLike | None = None,
              out_dir: str | os.PathLike = "out/eval", seeds: Sequence[int] | None = None,
              shards_root: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
              task_specs: Sequence[TaskSpec] | None = None, device: str | None = None,
              tokenizer: str | os.PathLike | None = None, progress: bool = True, plots: bool = True) -> dict:
    """Run a suite on one model directory; write results.json, results.md, plots/; return the results.

    seeds: fine-tuning seeds (default: (0,) for quick, (0, 1, 2) for full); results are mean ± std.
    tasks: run only these task names of the suite; task_specs: replace the suite entirely.
    tokenizer: tokenizer directory for a model directory that has none (e.g. a training checkpoint).
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    specs = list(task_specs) if task_specs is not None else suite_tasks(suite)
    if tasks is not None:
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown eval task(s) {sorted(unknown)}; choose from {sorted(TASKS)}")
        specs = [s for s in specs if s.name in tasks]
    seeds = tuple(seeds) if seeds is not None else ((0,) if suite == "quick" else (0, 1, 2))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if shards_root is not None:  # the MLM task reads token ids: they must be the model tokenizer's
        from mmbert.data.shards import ShardIndex, check_tokenizer

        tp = Path(tokenizer or model_path)
        check_tokenizer(ShardIndex.load(shards_root), tp / "tokenizer.json" if tp.is_dir() else tp,
                        role="the model's tokenizer")
    bb = load_backbone(model_path, device=device, tokenizer=tokenizer)
    root = D.resolve_data_dir(data_dir)
    have = D.available(root)
    log = lambda msg: tqdm.write(msg, file=sys.stderr) if progress else None  # noqa: E731
    if not root.is_dir():
        log(f"eval data directory {root} not found: data tasks skipped "
            f"(pass --data-dir or set ${D.ENV_VAR})")
    ctx = _Ctx(bb=bb, root=root, seeds=seeds, cache=out / "cache", progress=progress,
               model_path=Path(model_path), shards_root=Path(shards_root) if shards_root else None)
    results: dict[str, Any] = {
        "model": str(model_path), "backbone": bb.name, "suite": suite, "seeds": list(seeds),
        "data_dir": str(root), "device": str(device), "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": {}}
    for spec in tqdm(specs, desc=f"eval {suite}", disable=not progress):
        fn, folder = TASKS[spec.name]
        t0, c0 = time.perf_counter(), time.process_time()
        if folder is not None and not have[folder]:
            r = {"skipped": f"data folder {folder}/ absent"}
            if root.is_dir():
                log(f"{spec.name}: skipped, {root / folder} not found")
        else:
            try:
                r = fn(ctx, spec)
            except _Skip as e:
                r = {"skipped": str(e)}
                log(f"{spec.name}: skipped, {e}")
            except (D.EvalDataError, D.EvalDataMissing) as e:
                r = {"error": str(e)}
                log(f"{spec.name}: error: {e}")
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


def format_markdown(results: dict) -> str:
    """Summary table (one row per task) + one per-language table per task."""
    lines = [f"# Eval `{results['suite']}` — {results['model']}", "",
             f"backbone {results['backbone']}, seeds {results['seeds']}, device {results['device']}, "
             f"torch {results['torch']}, data {results['data_dir']}, started {results['started']}, "
             f"total {results.get('seconds', 0):.0f} s wall, {results.get('cpu_seconds', 0):.0f} s CPU", "",
             "| task | metric | average (×100, mean ± std over seeds) | languages | protocol | seconds | CPU s |",
             "|---|---|---:|---:|---|---:|---:|"]
    for name, r in results["tasks"].items():
        if "skipped" in r or "error" in r:
            lines.append(f"| {name} | {'skipped' if 'skipped' in r else 'ERROR'} | – | – | "
                         f"{r.get('skipped') or r.get('error')} | {r['seconds']} | {r['cpu_seconds']} |")
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
        p = plot_dir / f"{name}.png"
        tmp = p.with_name(f".{p.stem}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, p)
        written.append(p)
    return written
