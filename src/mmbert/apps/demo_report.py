"""The demo's report (report.md; demo.py turns it into report.html), rendered from a finished run's
files alone: <out>/demo.json (what ran, what it cost, the machine), run/ (metrics, plots),
shards/index.json, eval/mlm.json and eval/suite*/results.json.

    python -c "from mmbert.apps.demo import write_report; write_report('out/demo')"

What a reader needs beside every number: the floor it has to beat (chance, a constant predictor, the
same architecture untrained — computed in the same run) and the sample size it rests on. Languages
are grouped one way throughout: by the phase that first trains on them (`pretrain`, `mid`,
`decay-only`). The closing "Reading" section is generated from the numbers with one rule: a
difference counts only when it exceeds twice its binomial standard error. Every path is relative to
the output directory.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from mmbert.corpus.languages import resolve_tag
from mmbert.data.sampling import plan_phase
from mmbert.data.shards import ShardIndex, open_shard
from mmbert.eval.mlm import _chunks, assign_tiers
from mmbert.eval.runner import task_failure
from mmbert.model import EncoderConfig
from mmbert.train.recipe import Recipe
from mmbert.utils import atomic_write

# the demo's stages in run order (demo.py runs them; the cost table lists them in this order)
STAGES = ("corpus", "tokenizer", "shards", "pretrain", "merge", "eval-mlm", "eval-suite", "eval-suite-random-init")
RANDOM = "random-init"  # the untrained model with the same architecture and tokenizer: every table's floor
MERGE = "ties-merge"
MLM_TOKENS = 1024  # held-out tokens per language for the variant comparison (≈150 masked)


def _se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n items."""
    return math.sqrt(max(p * (1 - p), 1e-12) / n) if n else float("nan")


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _langs(n: int) -> str:
    return f"{n} language" if n == 1 else f"{n} languages"


def _hms(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s" if m else f"{sec} s"


# ----------------------------------------------------------------------------- facts from the run
def _phase_tokens(run: Path, rec) -> dict[str, int]:
    """Tokens actually trained per phase, from run/metrics.jsonl (variants count from the branch point)."""
    last: dict[tuple[str, str], int] = {}
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "train":
                last[(r["track"], r["phase"])] = r["tokens"]
    out, prev = {}, 0
    for p in rec.phases:
        t = last.get(("main", p.name))
        if t is not None:
            out[p.name], prev = t - prev, t
    for name, phases in rec.variants.items():
        start = prev
        for p in phases:
            t = last.get((name, p.name))
            if t is not None:
                out[p.name], start = t - start, t
    return out


def _tier_members(index, rec) -> dict[str, list[str]]:
    counts = {lang: index.tokens(lang) for lang in index.languages}
    tier_of = assign_tiers(counts, rec.language_tiers())
    members: dict[str, list[str]] = {t: [] for t, _ in rec.language_tiers()}
    for lang in sorted(counts, key=lambda k: (-counts[k], k)):
        members.setdefault(tier_of[lang], []).append(lang)
    return members


def _majority_token(shards: Path, langs: list[str], max_tokens: int, specials: set[int]) -> dict[str, float]:
    """Per language: the share of its most frequent (non-special) token among the held-out tokens the
    MLM comparison reads — the accuracy of always predicting that one token."""
    out = {}
    for lang in langs:
        toks = [t for row in _chunks(open_shard(shards, lang, "heldout"), 256, max_tokens) for t in row
                if t not in specials]
        out[lang] = Counter(toks).most_common(1)[0][1] / len(toks) if toks else float("nan")
    return out


# ----------------------------------------------------------------------------- plots
def _plot_sampling(plans, members: dict[str, list[str]], path: Path, max_named: int = 60) -> tuple[Path, str]:
    """Top: the languages of every tier but decay-only, by name, share per phase; bottom: every
    language sorted by size, one line per phase. Returns (path, caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = list(members)
    named = [lang for t in tiers[:-1] for lang in members[t]]
    shown = named[:max_named]
    order = [lang for t in tiers for lang in members[t]]  # largest first within each tier
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.5, 7.5), gridspec_kw={"height_ratios": [1.2, 1]})
    width = 0.8 / max(1, len(plans))
    for j, pl in enumerate(plans):
        d = pl.as_dict()
        top.bar([i + (j - (len(plans) - 1) / 2) * width for i in range(len(shown))],
                [100 * d.get(k, 0.0) for k in shown], width, label=f"{pl.name} (τ {pl.tau}, {len(pl.languages)})")
        xs = [i for i, k in enumerate(order) if k in d]
        bottom.plot(xs, [100 * d[order[i]] for i in xs], lw=1.2, label=pl.name)
    top.set_xticks(range(len(shown)), shown, rotation=90, fontsize=8)
    top.set_ylabel("sampling share (%)")
    top.set_yscale("log")
    _plain_log_ticks(top)
    top.set_title(f"languages of the {' and '.join(tiers[:-1])} tiers" +
                  (f" (first {len(shown)} of {len(named)})" if len(shown) < len(named) else ""), fontsize=10)
    top.legend(fontsize=8, ncol=2)
    edge = 0
    for t in tiers[:-1]:
        edge += len(members[t])
        bottom.axvline(edge - 0.5, color="grey", lw=0.8, ls=":")
    bottom.set_xlabel(f"all {len(order)} languages, tier by tier, largest first "
                      f"(dotted: tier boundaries {' | '.join(tiers)})")
    bottom.set_ylabel("sampling share (%)")
    bottom.set_yscale("log")
    _plain_log_ticks(bottom)
    bottom.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    caption = (f"Top: each of the {len(named)} languages of the {' and '.join(tiers[:-1])} tiers"
               + (f" — only the first {len(shown)} shown" if len(shown) < len(named) else "")
               + f"; bottom: every one of the {len(order)} languages (decay-only languages appear only in the "
                 f"phases that sample all languages).")
    return path, caption


def _plain_log_ticks(ax) -> None:
    """Log-axis tick labels as plain numbers (0.1, 2, 30) instead of 10^k mantissas."""
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):  # label the 2s and 5s of each decade only
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v) + 1e-9)) in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _plot_variants(mlm: dict, tiers: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(mlm)
    fig, (a0, a1) = plt.subplots(2, 1, figsize=(9.5, 7.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        accs = [100 * mlm[n]["tiers"].get(t, {}).get("accuracy", float("nan")) for t in tiers]
        a0.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(tiers))], accs, width, label=n,
               color="lightgrey" if n == RANDOM else None, edgecolor="grey" if n == RANDOM else None)
    a0.set_xticks(range(len(tiers)), [f"{t} ({_langs(mlm[names[0]]['tiers'].get(t, {}).get('languages', 0))})"
                                      for t in tiers])
    a0.set_ylabel("held-out MLM accuracy (%)")
    a0.set_title("by the phase that first trained on the language (grey: untrained model)", fontsize=10)
    a0.legend(fontsize=8, ncol=3)
    ref = next(n for n in names if n != RANDOM)
    langs = sorted(mlm[ref]["languages"], key=lambda lang: mlm[ref]["languages"][lang]["accuracy"])
    for n in names:
        a1.plot(range(len(langs)), [100 * mlm[n]["languages"][lang]["accuracy"] for lang in langs], lw=1, label=n,
                color="grey" if n == RANDOM else None, ls="--" if n == RANDOM else "-")
    a1.set_xlabel(f"all {len(langs)} languages with held-out data, sorted by {ref} accuracy")
    a1.set_ylabel("accuracy (%)")
    a1.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report
def render(out: Path) -> str:
    """report.md's text, from the run's files in `out` (writes the report's figures into report_files/)."""
    out = Path(out)
    info = json.loads((out / "demo.json").read_text())
    rec = Recipe.from_dict(info["recipe"])
    config = EncoderConfig(**info["model"])
    index = ShardIndex.load(out / "shards")
    members = _tier_members(index, rec)
    tier_of = {lang: t for t, ls in members.items() for lang in ls}
    tiers = list(members)
    mlm = json.loads((out / "eval" / "mlm.json").read_text())
    suites = {}
    for name, sub in ((MERGE, "suite"), (RANDOM, f"suite-{RANDOM}")):
        p = out / "eval" / sub / "results.json"
        if p.is_file():
            suites[name] = json.loads(p.read_text())
    figs = out / "report_files"
    phases = list(rec.phases) + [ph for track in rec.variants.values() for ph in track]
    counts = {lang: index.tokens(lang) for lang in index.languages}
    plans = [plan_phase(counts, p.languages, p.temperature, budget=p.tokens, name=p.name,
                        weights=getattr(p, "language_weights", None) or None) for p in phases]
    trained = _phase_tokens(out / "run", rec)
    readings: list[str] = []

    L = [f"# mmbert demo report: recipe `{rec.name}`, preset `{info['preset']}`", "",
         f"Everything below was produced by this run in `{out.name}/` and is rendered from its files; paths are "
         f"relative to that folder. Scores are percentages; each comes with the floor it has to beat and the "
         f"number of items it rests on.", ""]
    L += _trained_section(info, rec, config, index, phases, plans, trained)
    L += _cost_section(info)
    L += _tiers_section(out, members, plans, figs)
    L += _training_section(out)
    L += _mlm_section(out, mlm, tiers, config, index, figs, readings, rec)
    if suites:
        specials = _specials(config)
        L += _suite_section(suites, tier_of, readings, config.vocab_size,
                            lambda langs, n: _majority_token(out / "shards", langs, n, specials))
    else:
        ed = info.get("eval_data", {})
        L += ["## Task suite", "", f"Not run: no evaluation data was found ({ed.get('where')}: "
              f"`{ed.get('path')}`). Point `--data-dir` or `$MMBERT_EVAL_DATA` at the folder holding "
              f"`SOURCES.md`, `sib200/`, … and run `mmbert demo` again: finished stages are reused.", ""]
        readings.append("The task suite did not run (no evaluation data), so only held-out MLM is read here.")
    L += ["## Reading", "", "Generated from the numbers above; a difference counts when it exceeds twice its "
          "binomial standard error.", ""] + [f"- {r}" for r in readings] + [""]
    L += _use_section(out, trained)
    return "\n".join(L)


def _trained_section(info: dict, rec, config, index, phases, plans, trained: dict[str, int]) -> list[str]:
    n_all, n_body = config.num_parameters(), config.num_parameters(include_embeddings=False)
    emb = n_all - n_body
    L = ["## What was trained", "",
         f"- **Model**: preset `{info['preset']}` — {config.num_hidden_layers} layers, hidden size "
         f"{config.hidden_size}, {config.num_attention_heads} heads, vocabulary {config.vocab_size:,}. "
         f"**{n_all:,} parameters**, of which {emb:,} ({emb / n_all:.0%}) are the token embedding matrix "
         f"(shared with the MLM decoder) and {n_body:,} the transformer layers and head.",
         f"- **Data**: the corpus in `{info['corpus'].get('path')}` ({info['corpus'].get('languages')} languages, "
         f"{(info['corpus'].get('bytes') or 0) / 1e6:.0f} MB of text), tokenized into {len(index.languages)} "
         f"language tags with a held-out split (`shards/`).",
         f"- **Recipe** `{rec.name}`: the main track ({' → '.join(p.name for p in rec.phases)}), then "
         f"{len(rec.variants)} decay variants that each branch from the end of `{rec.phases[-1].name}` "
         f"({', '.join(rec.variants)}), TIES-merged with density {info['density']} (`merged/model`). "
         f"Seed {info['seed']}.", "",
         "| phase | tokens planned | tokens trained | seq len | languages | τ | mask | RoPE θ global/local | "
         "LR peak, decay |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for p, pl in zip(phases, plans):
        L.append(f"| {p.name} | {p.tokens:,} | {trained.get(p.name, 0):,} | {p.seq_len} | {len(pl.languages)} | "
                 f"{p.temperature} | {p.mask_rate:.0%} | {p.global_rope_theta:g} / {p.local_rope_theta:g} | "
                 f"{p.lr_peak:g}, {p.lr_decay} |")
    return L + [f"| **all phases** | {sum(p.tokens for p in phases):,} | {sum(trained.values()):,} | | | | | | |", ""]


def _cost_section(info: dict) -> list[str]:
    st = info["stages"]
    mach = info["machine"]
    total_cpu = sum(v.get("cpu_seconds") or 0 for v in st.values())
    total_wall = sum(v.get("seconds") or 0 for v in st.values())
    L = ["## What it cost", "",
         f"Machine: {mach['cpu']}, {mach['cores']} logical cores, torch {mach['torch']} with "
         f"{mach['torch_threads']} threads" + (f", {mach['memory_gib']:.0f} GiB memory" if mach.get("memory_gib")
                                               else "") + (f", GPU {mach['gpu']}" if mach.get("gpu") else ", no GPU")
         + f"; {mach['os']}, Python {mach['python']}. CPU time counts every thread of the process and its worker "
           f"processes, so CPU ÷ wall ≈ the cores kept busy.", "",
         "| stage | wall | CPU | |", "|---|---:|---:|---|"]
    for name in sorted(st, key=lambda k: STAGES.index(k) if k in STAGES else 99):
        v = st[name]
        note = {"ran": "", "reused": "reused: finished in an earlier run (its time then)",
                "skipped": f"skipped: {v.get('note', '')}"}[v["status"]]
        L.append(f"| {name} | {_hms(v['seconds']) if v['status'] != 'skipped' else '–'} | "
                 f"{_hms(v.get('cpu_seconds'))} | {note} |")
    return L + [f"| **all stages** | {_hms(total_wall)} | {_hms(total_cpu)} | this invocation: "
                f"{_hms(info['total_seconds'])} |", ""]


def _tiers_section(out: Path, members: dict[str, list[str]], plans, figs: Path) -> list[str]:
    L = ["## Language tiers and sampling", "",
         "Languages are grouped by the phase that first trains on them; these three names are used for the "
         "same groups everywhere in this report and in `run/plots/heldout.png`:", ""]
    for t in members:
        ls = members[t]
        what = ("seen only in the decay variants that sample every language" if t == "decay-only"
                else f"first trained in the `{t}` phase")
        L.append(f"- **{t}** ({_langs(len(ls))}, {what}): " + ", ".join(ls[:24]) + (" …" if len(ls) > 24 else ""))
    samp, caption = _plot_sampling(plans, members, figs / "sampling.png")
    return L + ["", f"![language sampling per phase]({samp.relative_to(out)})", "",
                f"Sampling share p ∝ n^τ per phase. {caption}", ""]


def _training_section(out: Path) -> list[str]:
    L = ["## Training", ""]
    for name, what in (("loss", "training loss per track (the mask rate changes by phase, so phases are not "
                                 "comparable with each other)"),
                       ("heldout", "held-out MLM loss during training, thin lines per language, thick per tier"),
                       ("schedules", "learning rate, mask rate, τ and sequence length as trained"),
                       ("throughput", "training tokens per second")):
        p = out / "run" / "plots" / f"{name}.png"
        if p.is_file():
            L += [f"![{name}]({p.relative_to(out)})", "", f"*{what[0].upper() + what[1:]}.*", ""]
    return L


def _use_section(out: Path, trained: dict[str, int]) -> list[str]:
    L = ["## Use the merged model", "", f"From inside `{out.name}/`:", "", "```python", "import mmbert",
         "model = mmbert.from_pretrained('merged/model')", "from transformers import pipeline",
         "pipeline('fill-mask', model='merged/model')('The capital of France is <mask>.')", "```", "",
         f"After {_num(sum(trained.values()))} training tokens expect fill-mask answers to be frequent tokens "
         f"rather than facts (mmBERT trained on 3 trillion); compare with the untrained model's:", ""]
    fm = out / "eval" / "fill_mask.json"
    if fm.is_file():
        d = json.loads(fm.read_text())
        cell = lambda toks: ", ".join(f"`{t.replace('`', '')}`" for t in toks).replace("|", "\\|")  # noqa: E731
        L += [f"| prompt | {MERGE}: top 5 | {RANDOM}: top 5 |", "|---|---|---|"]
        L += [f"| `{prompt}` | {cell(d['top5'][MERGE][i])} | {cell(d['top5'][RANDOM][i])} |"
              for i, prompt in enumerate(d["prompts"])]
        L.append("")
    return L


def _specials(config) -> set[int]:
    return {getattr(config, k) for k in ("pad_token_id", "eos_token_id", "bos_token_id", "cls_token_id",
                                         "sep_token_id", "unk_token_id", "mask_token_id")} - {None}


def _group_stats(r: dict, group: str) -> tuple[float, float, int, int] | None:
    """(macro accuracy, its standard error, masked tokens, languages) of one model's MLM result over a
    tier's languages, or over every language for group "all"; None for an empty tier."""
    ls = [lang for lang in r["languages"] if (group == "all" or r["languages"][lang]["tier"] == group)
          and r["languages"][lang]["masked_tokens"] > 0]
    if not ls and group != "all":
        return None
    acc = sum(r["languages"][lang]["accuracy"] for lang in ls) / len(ls)
    se = math.sqrt(sum(_se(r["languages"][lang]["accuracy"], r["languages"][lang]["masked_tokens"]) ** 2
                       for lang in ls)) / len(ls)
    return acc, se, sum(r["languages"][lang]["masked_tokens"] for lang in ls), len(ls)


def _mlm_section(out, mlm, tiers, config, index, figs, readings, rec) -> list[str]:
    specials = _specials(config)
    some = next(iter(mlm.values()))
    langs = list(some["languages"])
    majority = _majority_token(out / "shards", langs, MLM_TOKENS, specials)
    fig = _plot_variants(mlm, tiers, figs / "variants_mlm.png")
    groups = tiers + ["all"]
    head = []
    for g in groups:
        s = _group_stats(some, g)
        head.append(f"{g} ({_langs(s[3])}, {s[2]:,} masked)" if s else f"{g} (none)")
    L = ["## Held-out MLM by variant", "",
         f"Masked-token accuracy on each language's held-out split: the first {MLM_TOKENS:,} tokens, 15% masked "
         f"with a fixed seed, so every model sees the same masks. Averages are over languages (macro); the "
         f"header gives each group's size and masked-token count. Floors: **{RANDOM}** is the same architecture "
         f"and tokenizer, untrained; **constant** always predicts each language's most frequent token; "
         f"**chance** is 1 / vocabulary = {100 / config.vocab_size:.3f}.", "",
         f"![held-out MLM by variant]({fig.relative_to(out)})", "",
         "| model | " + " | ".join(head) + " | macro loss |", "|---|" + "---:|" * (len(groups) + 1)]
    for name, r in mlm.items():
        cells = []
        for g in groups:
            s = _group_stats(r, g)
            cells.append("–" if s is None else f"{_pct(s[0])} ± {_pct(s[1])}")
        label = f"{name} (floor)" if name == RANDOM else name
        L.append(f"| {label} | " + " | ".join(cells) + f" | {r['macro']['loss']:.3f} |")
    maj = []
    for g in groups:
        ls = [lang for lang in langs if (g == "all" or some["languages"][lang]["tier"] == g)
              and not math.isnan(majority[lang])]
        maj.append(_pct(sum(majority[lang] for lang in ls) / len(ls)) if ls else "–")
    L += ["| constant (floor) | " + " | ".join(maj) + " | |", ""]
    per_lang = _mlm_per_language(mlm, some, langs, tiers, majority, figs / "mlm_per_language.md")
    L += [f"Per language, with its masked-token count: [`{per_lang.relative_to(out)}`]({per_lang.relative_to(out)}) "
          f"(at ~{int(0.15 * MLM_TOKENS)} masked tokens a language's accuracy carries a standard error of up to "
          f"±{100 * _se(0.5, int(0.15 * MLM_TOKENS)):.0f} points).", ""]
    readings += _mlm_readings(mlm, langs, majority, tiers, rec)
    return L


def _mlm_per_language(mlm: dict, some: dict, langs: list[str], tiers: list[str], majority: dict[str, float],
                      path: Path) -> Path:
    """The per-language accuracy table, written beside the report; returns its path."""
    rows = ["| language | tier | masked tokens | " + " | ".join(mlm) + " | constant |",
            "|---|---|---:|" + "---:|" * (len(mlm) + 1)]
    for lang in sorted(langs, key=lambda x: (tiers.index(some["languages"][x]["tier"])
                                             if some["languages"][x]["tier"] in tiers else 99, x)):
        v = some["languages"][lang]
        rows.append(f"| {lang} | {v['tier']} | {v['masked_tokens']} | "
                    + " | ".join(_pct(mlm[m]["languages"][lang]["accuracy"]) for m in mlm)
                    + f" | {_pct(majority[lang])} |")
    path.write_text("# Held-out MLM accuracy per language (%)\n\n" + "\n".join(rows) + "\n")
    return path


def _mlm_readings(mlm: dict, langs: list[str], majority: dict[str, float], tiers: list[str], rec) -> list[str]:
    """The "Reading" lines of the held-out MLM numbers: best model, floors, the decay-all gain, the merge."""
    readings = []
    trained = [n for n in mlm if n != RANDOM]
    branch = rec.phases[-1].name
    best = max(trained, key=lambda n: _group_stats(mlm[n], "all")[0])
    b_acc, b_se = _group_stats(mlm[best], "all")[:2]
    readings.append(f"Held-out MLM, all languages: **{best}** is best ({_pct(b_acc)} ± {_pct(b_se)}); " + ", ".join(
        f"{n} {_pct(_group_stats(mlm[n], 'all')[0])}" for n in trained if n != best) + ".")
    at_floor = False
    if RANDOM in mlm:
        r_acc, r_se = _group_stats(mlm[RANDOM], "all")[:2]
        m_acc = sum(majority[lang] for lang in langs if not math.isnan(majority[lang])) / max(1, len(langs))
        floor, fname = (r_acc, RANDOM) if r_acc >= m_acc else (m_acc, "always predicting the most frequent token")
        if b_acc - floor <= 2 * math.hypot(b_se, r_se):
            at_floor = True
            readings.append(f"**At floor**: no trained model beats {fname} ({_pct(floor)}) on held-out MLM beyond "
                            f"noise — at this scale the models have learnt little more than token frequencies.")
        else:
            readings.append(f"Every score is above the floors: the best trained model gains "
                            f"{100 * (b_acc - r_acc):.1f} points over the untrained one and "
                            f"{100 * (b_acc - m_acc):+.1f} over always predicting the most frequent token.")
    decay_all = next((n for n in trained if n != branch and n != "ties-merge"
                      and any(p.languages == "all" for p in rec.variants.get(n, ()))), None)
    if decay_all and branch in mlm and "decay-only" in tiers:
        readings += _decay_all_reading(mlm, decay_all, branch)
    if MERGE in mlm:
        readings.append(_merge_reading(mlm, trained, best, b_acc, b_se, at_floor))
    return readings


def _decay_all_reading(mlm: dict, decay_all: str, branch: str) -> list[str]:
    s0, s1 = _group_stats(mlm[branch], "decay-only"), _group_stats(mlm[decay_all], "decay-only")
    if not (s0 and s1):
        return []
    gain, noise = s1[0] - s0[0], 2 * math.hypot(s0[1], s1[1])
    if gain <= noise:
        return [f"On the decay-only languages {decay_all} and {branch} are within noise "
                f"({100 * gain:+.1f} points, noise ±{100 * noise:.1f}): this run cannot show "
                f"a gain from decaying on all languages, so nothing can be said of the merge "
                f"keeping it."]
    text = (f"Decaying on all languages helps the decay-only languages: {decay_all} gains "
            f"{100 * gain:.1f} points over {branch} there (noise ±{100 * noise:.1f}).")
    sm = _group_stats(mlm.get(MERGE, {}), "decay-only") if MERGE in mlm else None
    if sm:
        kept = (sm[0] - s0[0]) / gain
        text += (f" The TIES merge keeps {kept:.0%} of that gain." if kept > 0.5 else
                 f" The TIES merge keeps only {kept:.0%} of that gain (it loses what {decay_all} won).")
    return [text]


def _merge_reading(mlm: dict, trained: list[str], best: str, b_acc: float, b_se: float, at_floor: bool) -> str:
    m_acc, m_se = _group_stats(mlm[MERGE], "all")[:2]
    loss_best = min(trained, key=lambda n: mlm[n]["macro"]["loss"])
    if best == MERGE or b_acc - m_acc <= 2 * math.hypot(b_se, m_se):
        return (f"**Use `merged/model`** (the TIES merge): it is the best or within noise of the best "
                f"on held-out accuracy ({_pct(m_acc)} vs {_pct(b_acc)}); lowest held-out loss: "
                f"{loss_best} ({mlm[loss_best]['macro']['loss']:.3f} vs merge "
                f"{mlm[MERGE]['macro']['loss']:.3f})"
                + (" — though with every model at floor the choice matters little." if at_floor else "."))
    return (f"The TIES merge is worse than {best} on held-out accuracy ({_pct(m_acc)} vs "
            f"{_pct(b_acc)}, beyond noise) and has loss {mlm[MERGE]['macro']['loss']:.3f} vs "
            f"{mlm[best]['macro']['loss']:.3f}: **use `run/export/{best}`** for these languages.")


def _lang_tier(lang: str, tier_of: dict[str, str]) -> str:
    """A task's language code → the corpus tier (tags as in the corpus, or ISO 639-3 codes)."""
    if lang in tier_of:
        return tier_of[lang]
    try:
        tag = resolve_tag(lang)  # en → eng_Latn, ara → arb_Arab
    except ValueError:  # e.g. a treebank name
        return "–"
    if tag in tier_of:
        return tier_of[tag]
    hits = [t for other, t in tier_of.items() if other.split("_")[0] == tag.split("_")[0]]
    return hits[0] if hits else "not in corpus"


def _suite_section(suites: dict, tier_of: dict[str, str], readings: list[str], vocab: int,
                   constant_token) -> list[str]:
    main = suites.get(MERGE) or next(iter(suites.values()))
    rnd = suites.get(RANDOM, {"tasks": {}})
    L = ["## Task suite", "",
         f"The `{main['suite']}` suite on the TIES merge (`{main['model']}`) and on the untrained model "
         f"(`{rnd.get('model', '–')}`), same tasks, same fine-tuning seed ({main['seeds']}). Floors: "
         f"**{RANDOM}** = the same recipe applied to the untrained model; **chance** = a uniform guess "
         f"(1 / classes, or 1 / candidates for retrieval); **majority** = predicting the training set's most "
         f"frequent label everywhere (for MLM: each language's most frequent token). n = items per language "
         f"(examples, retrieval pairs, masked tokens).", "",
         f"| task | metric | {MERGE} | {RANDOM} | chance | majority | languages | n per language | above floor? |",
         "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    details = []
    for name, r in main["tasks"].items():
        if failed := task_failure(r):
            L.append(f"| {name} | {failed[0]}: {failed[1]} | – | – | – | – | – | – | |")
            continue
        langs = r["languages"]
        ns = [_n(v) for v in langs.values() if _n(v)]
        rr = rnd["tasks"].get(name, {})
        r_mean = rr.get("average", {}).get("mean") if "average" in rr else None
        floors = r.get("floors") or {}
        if name == "mlm":  # the constant predictor on the tokens this task read
            const = constant_token(list(langs), max(v.get("tokens", 0) for v in langs.values()))
            for lang, v in langs.items():
                v["majority"] = const[lang]
            floors = {"chance": 1 / vocab, "majority": sum(const.values()) / len(const)}
        mean = r["average"]["mean"]
        se = (math.sqrt(sum(_se(v["mean"], _n(v)) ** 2 for v in langs.values() if _n(v))) / len(ns)
              if len(ns) == len(langs) and ns else None)
        named = {RANDOM: r_mean, "chance": floors.get("chance"), "majority": floors.get("majority")}
        named = {k: v for k, v in named.items() if v is not None}
        top_floor = max(named.values(), default=None)
        top_names = " = ".join(k for k, v in named.items() if v == top_floor)
        if top_floor is None or se is None:
            verdict = "–"
        else:
            r_se = se if r_mean is not None else 0.0
            verdict = ("no: at floor" if mean - top_floor <= 2 * math.hypot(se, r_se)
                       else f"yes, +{100 * (mean - top_floor):.1f}")
        n_txt = "–" if not ns else (f"{min(ns):,}" if min(ns) == max(ns) else f"{min(ns):,}–{max(ns):,}")
        L.append(f"| {name} | {r['metric']} | {_pct(mean)} | {_pct(r_mean)} | {_pct(floors.get('chance'))} | "
                 f"{_pct(floors.get('majority'))} | {len(langs)} | {n_txt} | {verdict} |")
        if verdict.startswith("no"):
            readings.append(f"{name}: **at floor** — {_pct(mean)} against {_pct(top_floor)} "
                            f"({top_names}); "
                            f"the score says nothing about the model yet.")
        elif verdict.startswith("yes"):
            readings.append(f"{name}: above every floor ({_pct(mean)} vs {_pct(top_floor)}, {top_names}).")
        rl = rr.get("languages", {})
        rows = [f"### {name}", "", f"{r['protocol']}.", "",
                f"| language | tier | n | {MERGE} | {RANDOM} | majority |", "|---|---|---:|---:|---:|---:|"]
        for lang, v in sorted(langs.items()):
            rows.append(f"| {lang} | {_lang_tier(lang, tier_of)} | {_n(v) or '–'} | {_pct(v['mean'])} | "
                        f"{_pct(rl.get(lang, {}).get('mean'))} | {_pct(v.get('majority'))} |")
        details += rows + [""]
    L += ["", "Per language (tiers as above; “not in corpus” = a language the model never trained on):", ""]
    return L + details


def _n(v: dict) -> int | None:
    """Sample size of one per-language score: examples, retrieval pairs, or masked tokens (MLM)."""
    return v.get("n") or v.get("masked_tokens")
