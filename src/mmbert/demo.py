"""The one-command end-to-end run: corpus → tokenizer → shards → 3-phase pretraining with annealed
language sampling → three decay variants → TIES merge → evaluation → report.md / report.html.

    make demo                       # = mmbert demo --out out/demo (sets up .venv first)
    mmbert demo --out out/demo --data-dir ../shared/data/eval

Each stage writes a `.done.json` marker into its folder when it finishes; re-running reuses finished
stages (and the pretraining run resumes exactly where it stopped). The embedded corpus is built
once into `--corpus` (default out/corpus) and shared by later runs.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from mmbert.utils import atomic_write



def _done(folder: Path) -> dict | None:
    marker = folder / ".done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark(folder: Path, info: dict) -> None:
    atomic_write(folder / ".done.json", json.dumps(info, indent=2, sort_keys=True))


def _stage(name: str, folder: Path, fn: Callable[[], dict], log: Callable[[str], None], timings: dict) -> dict:
    """Run `fn` unless `folder` already holds a finished result; record the wall time."""
    prev = _done(folder)
    if prev is not None:
        log(f"[{name}] reusing {folder} (finished earlier in {prev.get('seconds', 0):.0f} s)")
        timings[name] = {"seconds": prev.get("seconds", 0.0), "reused": True}
        return prev
    log(f"[{name}] running → {folder}")
    t0 = time.perf_counter()
    info = fn() or {}
    info["seconds"] = time.perf_counter() - t0
    _mark(folder, info)
    timings[name] = {"seconds": info["seconds"], "reused": False}
    log(f"[{name}] done in {info['seconds']:.0f} s")
    return info


def run_demo(out: str | os.PathLike = "out/demo", *, corpus: str | os.PathLike = "out/corpus",
             data_dir: str | os.PathLike | None = None, seed: int = 0, vocab_size: int = 32768,
             recipe: str = "cpu-demo", preset: str = "tiny", density: float = 0.7, eval_suite: str = "quick",
             sources: list[str] | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run every stage into `out`; returns the path of report.md."""
    import torch

    from mmbert.corpus.build import build_corpus, summary
    from mmbert.data.prepare import prepare_shards
    from mmbert.data.shards import ShardIndex
    from mmbert.eval import data as eval_data
    from mmbert.merge import merge
    from mmbert.model import EncoderConfig
    from mmbert.tokenizer import train_tokenizer
    from mmbert.train.loop import train
    from mmbert.train.recipe import get_recipe

    out, corpus = Path(out), Path(corpus)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}
    t_all = time.perf_counter()

    # 1. corpus (shared between demo runs)
    def build():
        stats = build_corpus(corpus, cache_dir=corpus.parent / "cache", sources=sources, progress=progress)
        log(summary(stats))
        return {"languages": stats["num_languages"], "bytes": stats["total_bytes"]}

    if (corpus / "stats.json").is_file() and _done(corpus) is None:  # built by `mmbert corpus build`
        st = json.loads((corpus / "stats.json").read_text())
        _mark(corpus, {"languages": st.get("num_languages"), "bytes": st.get("total_bytes"),
                       "seconds": st.get("build_seconds", 0.0)})
    corpus_info = _stage("corpus", corpus, build, log, timings)

    # 2. tokenizer, 3. shards
    tok_dir, shards = out / "tokenizer", out / "shards"
    _stage("tokenizer", tok_dir, lambda: {"vocab_size": train_tokenizer(corpus, vocab_size, tok_dir,
                                                                        seed=seed).vocab_size}, log, timings)
    _stage("shards", shards, lambda: {"languages": len(prepare_shards(corpus, tok_dir, shards,
                                                                      progress=progress)["languages"])},
           log, timings)
    index = ShardIndex.load(shards)

    # 4. pretraining: main track (pretrain → mid) and the three decay variants
    rec = get_recipe(recipe)
    config = EncoderConfig.from_preset(preset or rec.preset, vocab_size=_round_vocab(index.vocab_size))
    run = out / "run"

    def pretrain():
        res = train(rec, config, shards, run, seed=seed, resume=(run / "run.json").is_file(), progress=progress)
        return {"tracks": res["tracks"]}

    _stage("pretrain", run / "done", pretrain, log, timings)
    exports = run / "export"
    main_last = rec.phases[-1].name
    variants = list(rec.variants)  # the loop's exports carry the shards' tokenizer (index.json names it)

    # 5. TIES merge of the decay variants, relative to the checkpoint they branched from
    merged = out / "merged"
    _stage("merge", merged / "done", lambda: {"path": str(merge(
        [exports / v for v in variants], merged / "model", method="ties", base=exports / main_last,
        density=density, overwrite=True, progress=progress))}, log, timings)

    # 6. evaluation: per-language held-out MLM for the branch point, each variant and the merge
    models = {main_last: exports / main_last, **{v: exports / v for v in variants}, "ties-merge": merged / "model"}
    tiers = _tiers(rec)
    mlm_json = out / "eval" / "mlm.json"

    def eval_mlm():
        import mmbert
        from mmbert.eval.mlm import evaluate_mlm

        langs = [lang for lang in index.languages if index.has(lang, "heldout")]
        res = {}
        for name, path in models.items():
            model = mmbert.from_pretrained(path)
            res[name] = evaluate_mlm(model, shards, langs, max_tokens_per_lang=1024, seed=0, seq_len=256,
                                     tiers=tiers, progress=progress)
        mlm_json.parent.mkdir(parents=True, exist_ok=True)
        mlm_json.write_text(json.dumps(res, indent=1))
        return {"models": list(res)}

    _stage("eval-mlm", out / "eval" / "mlm", eval_mlm, log, timings)
    mlm = json.loads(mlm_json.read_text())

    suite_res = None
    root = eval_data.resolve_data_dir(data_dir)
    if root.is_dir():
        from mmbert.eval.runner import run_suite

        def suite():
            run_suite(merged / "model", eval_suite, data_dir=root, out_dir=out / "eval" / "suite", seeds=(seed,),
                      shards_root=shards, progress=progress)
            return {}

        _stage("eval-suite", out / "eval" / "suite", suite, log, timings)
        suite_res = json.loads((out / "eval" / "suite" / "results.json").read_text())
    else:
        log(f"[eval-suite] skipped: evaluation data directory {root} not found (pass --data-dir)")

    timings["total_seconds"] = time.perf_counter() - t_all
    return write_report(out, rec, index, corpus_info, mlm, suite_res, timings, torch.__version__)


def _round_vocab(n: int) -> int:
    return n if n % 64 == 0 else n + 64 - n % 64


def _tiers(rec) -> list[tuple[str, Any]]:
    """Report languages by the phase that introduced them: pretrain langs, added at mid, decay-only."""
    tiers = []
    for p in rec.phases:
        tiers.append((p.name, p.languages if isinstance(p.languages, str) else list(p.languages)))
    tiers.append(("decay-only", "all"))
    return tiers


# ----------------------------------------------------------------------------- report
def _plot_variants(mlm: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(mlm)
    tiers = list(next(iter(mlm.values()))["tiers"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        accs = [mlm[n]["tiers"][t]["accuracy"] for t in tiers]
        axes[0].bar([j + i * width for j in range(len(tiers))], accs, width, label=n)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(tiers))], tiers)
    axes[0].set_ylabel("held-out MLM accuracy (15% mask)")
    axes[0].set_title("by the phase that introduced the language")
    axes[0].legend(fontsize=8)
    ref = names[0]
    langs = sorted(mlm[ref]["languages"], key=lambda lang: mlm[ref]["languages"][lang]["accuracy"])
    for n in names:
        axes[1].plot(range(len(langs)), [mlm[n]["languages"][lang]["accuracy"] for lang in langs], lw=1, label=n)
    axes[1].set_xlabel(f"language (sorted by {ref} accuracy)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title(f"per language ({len(langs)} with held-out data)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, rec, index, corpus_info: dict, mlm: dict, suite_res: dict | None, timings: dict,
                 torch_version: str) -> Path:
    from mmbert.data.sampling import plan_phase, plot_plans
    from mmbert.train.plots import make_plots

    figs = out / "report_files"
    figs.mkdir(parents=True, exist_ok=True)
    counts = {lang: index.tokens(lang) for lang in index.languages}
    phases = list(rec.phases) + [ph for track in rec.variants.values() for ph in track]
    plans = [plan_phase(counts, p.languages, p.temperature, budget=p.tokens, name=p.name,
                        weights=getattr(p, "language_weights", None) or None) for p in phases]
    sampling_png = plot_plans(plans, figs / "sampling.png")
    variants_png = _plot_variants(mlm, figs / "variants_mlm.png")
    run_plots = make_plots(out / "run")

    lines = ["# mmbert demo report", "",
             f"Recipe `{rec.name}` on the embedded corpus ({corpus_info.get('languages')} languages, "
             f"{(corpus_info.get('bytes') or 0) / 1e6:.0f} MB of text; {len(index.languages)} language tags "
             f"tokenized). torch {torch_version}. Every number below was produced by this run.", "",
             "## Stages", "", "| stage | wall time | |", "|---|---:|---|"]
    for k, v in timings.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['seconds']:.0f} s | {'reused' if v['reused'] else ''} |")
    lines += [f"| **total (this invocation)** | {timings['total_seconds']:.0f} s | |", "",
              "## Phases", "", "| phase | tokens | seq len | languages | τ | mask | RoPE θ (global/local) | LR peak → decay |",
              "|---|---:|---:|---:|---:|---:|---|---|"]
    for p, pl in zip(phases, plans):
        lines.append(f"| {p.name} | {p.tokens:,} | {p.seq_len} | {len(pl.languages)} | {p.temperature} | "
                     f"{p.mask_rate:.0%} | {p.global_rope_theta:g}/{p.local_rope_theta:g} | "
                     f"{p.lr_peak:g} → {p.lr_decay} |")
    lines += ["", "## Language sampling per phase (p ∝ n^τ)", "", f"![sampling]({sampling_png.relative_to(out)})", ""]
    lines += ["## Training", ""] + [f"![{p.stem}]({p.relative_to(out)})" for p in run_plots] + [""]
    lines += ["## Held-out MLM by variant (15% masking, fixed seed)", "",
              f"![variants]({variants_png.relative_to(out)})", ""]
    tiers = list(next(iter(mlm.values()))["tiers"])
    lines += ["| model | " + " | ".join(f"{t} acc" for t in tiers) + " | macro acc | macro loss |",
              "|---|" + "---:|" * (len(tiers) + 2)]
    for name, r in mlm.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['tiers'][t]['accuracy']:.4f}" for t in tiers)
                     + f" | {r['macro']['accuracy']:.4f} | {r['macro']['loss']:.3f} |")
    lines.append("")
    if suite_res is not None:
        md = out / "eval" / "suite" / "results.md"
        lines += ["## Task suite (TIES merge)", "", md.read_text() if md.is_file() else json.dumps(suite_res)[:2000], ""]
    lines += ["## Use the merged model", "", "```python", "import mmbert",
              f"model = mmbert.from_pretrained('{out / 'merged' / 'model'}')",
              "from transformers import pipeline",
              f"pipeline('fill-mask', model='{out / 'merged' / 'model'}')('The capital of France is <mask>.')",
              "```", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    (out / "report.html").write_text(_markdown_to_html("\n".join(lines)))
    return report


def _markdown_to_html(md: str) -> str:
    """Enough markdown for this report: headings, tables, images, code blocks, paragraphs."""
    body, in_table, in_code = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c).replace('**', '')}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}" style="max-width:100%"></p>')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "pre{background:#f4f4f4;padding:1em}")
    return f"<!doctype html><meta charset='utf-8'><title>mmbert demo</title><style>{style}</style>\n" + "\n".join(body)
