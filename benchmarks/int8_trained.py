"""How close `dtype="int8"` (and "bf16") embeddings stay to fp32 on TRAINED models and real
multilingual text (issue 15: "auto" may choose int8 only where the cosine to fp32 on a trained
model stays ≥ 0.999; random weights say little about that).

    PYTHONPATH=src .venv/bin/python benchmarks/int8_trained.py                    # every study model
    PYTHONPATH=src .venv/bin/python benchmarks/int8_trained.py --models 'out/demo/run/export/*' --limit 5

--models is a glob of exported model directories (config.json, model.safetensors, tokenizer.json):
`make demo` writes out/demo/run/export/<phase or decay variant>/, and `mmbert study run` writes
runs/<arm>/seed<k>/export/<phase>/ per arm, seed and phase — the default glob reads the study's tiny
models under /work/studyout (three phases per arm and seed). Texts: SIB-200 test sentences (`sib200/<lang>/test.tsv`,
column `text`; --data-dir, default $MMBERT_EVAL_DATA or ../shared/data/eval), the first
--per-lang of each of eight languages in five scripts (default --langs: English, German, Swahili,
Yorùbá in Latin; Chinese, Arabic, Hindi, Russian); the script says so and stops if the data is
absent. Per model: `mmbert.inference.embed(model, texts, dtype=…)` (mean pooling) in fp32,
int8 and bf16, --threads threads (default 2); the cosine of each text's int8 / bf16 embedding to
its fp32 one, in float64; min and mean over the texts. The "random ids" column does the same for
int8 with the same token-id lists, their content replaced by uniform random ids (framing tokens
kept): what a check on random input would see. It flatters int8 (first three study models: min
0.99972–0.99984 on random ids, 0.99948–0.99974 on the text), likely because real text drives a
trained model's activations to the outliers that per-batch activation quantisation rounds worst.
int8 quantises activations with one scale per packed batch (embed packs up to 16,384 tokens, so
all 128 default texts share one), so a text's cosine depends on its batch-mates; keep --per-lang and
--langs fixed when comparing runs. A summary ends the table: min over models, median over models,
and the share of models whose min cosine is ≥ `inference.MIN_COSINE` (0.999). Results in
benchmarks/results/int8_trained_<machine>_<yyyymm>.md.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import statistics
import sys
import time
from pathlib import Path

import torch

DEFAULT_MODELS = "/work/studyout/study/runs/*/seed*/export/*"
LANGS = "eng_Latn,deu_Latn,zho_Hans,arb_Arab,hin_Deva,swh_Latn,yor_Latn,rus_Cyrl"
COLUMNS = ("int8", "bf16", "int8 random ids")


def load_texts(root: Path, langs: list[str], per_lang: int) -> tuple[list[str], list[str]]:
    """The first `per_lang` SIB-200 test sentences of each language present; (texts, languages found)."""
    from mmbert.eval.data import load_sib200

    found = [lang for lang in langs if (root / "sib200" / lang / "test.tsv").is_file()]
    return [ex.text for lang in found for ex in load_sib200(root, lang, "test")[:per_lang]], found


def cosine_min_mean(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Min and mean over rows of the cosine between a[i] and b[i], computed in float64."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return cos.min().item(), cos.mean().item()


def random_ids(ids: list[list[int]], vocab_size: int, seed: int = 0) -> list[list[int]]:
    """The same lengths and first/last (framing) tokens, the inside replaced by uniform random ids
    from the non-special range [5, vocab_size)."""
    g = torch.Generator().manual_seed(seed)
    return [x[:1] + torch.randint(5, vocab_size, (max(len(x) - 2, 0),), generator=g).tolist() + x[-1:]
            if len(x) > 2 else list(x) for x in ids]


def model_row(path: str, texts: list[str], threads: int) -> dict[str, tuple[float, float]]:
    import mmbert
    from mmbert.inference import check_int8, embed, int8_probe, tokenize

    model = mmbert.from_pretrained(path, head="none")
    out = {}
    ref = embed(model, texts, dtype="fp32", threads=threads)
    for dtype in ("int8", "bf16"):
        out[dtype] = cosine_min_mean(embed(model, texts, dtype=dtype, threads=threads), ref)
    probe = random_ids(tokenize(model.tokenizer, texts), model.config.vocab_size)
    out["int8 random ids"] = cosine_min_mean(embed(model, probe, dtype="int8", threads=threads),
                                             embed(model, probe, dtype="fp32", threads=threads))
    out["check"] = check_int8(model, int8_probe(model.tokenizer, []))  # what dtype="auto" checks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="glob of exported model directories")
    ap.add_argument("--data-dir", default=None,
                    help="evaluation data (default: $MMBERT_EVAL_DATA or ../shared/data/eval)")
    ap.add_argument("--langs", default=LANGS, help="comma-separated SIB-200 languages")
    ap.add_argument("--per-lang", type=int, default=16, help="sentences per language")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="at most this many models (sorted by path)")
    args = ap.parse_args()

    from mmbert.eval.data import resolve_data_dir
    from mmbert.inference import INT8_PROBE_MIN_COSINE, MIN_COSINE, SPEED_FLAGS, cpu_flags, cpu_model, cpu_vendor

    root, langs = resolve_data_dir(args.data_dir), args.langs.split(",")
    texts, found = load_texts(root, langs, args.per_lang)
    if not texts:
        print(f"skipped: no SIB-200 test file for any of {args.langs} under {root} (sib200/<lang>/test.tsv); "
              f"pass --data-dir or set $MMBERT_EVAL_DATA to the eval data directory")
        return
    models = sorted(d for d in glob.glob(args.models) if os.path.isfile(os.path.join(d, "config.json")))
    if not models:
        sys.exit(f"error: no model directory (with a config.json) matches --models {args.models!r}; "
                 f"train one with `make demo` or `mmbert study run`, or point --models at exported models")
    models = models[:args.limit]
    torch.set_num_threads(args.threads)
    prefix = os.path.commonpath(models) if len(models) > 1 else os.path.dirname(models[0])

    flags = " ".join(f for f in SPEED_FLAGS if f in cpu_flags()) or "none of " + " ".join(SPEED_FLAGS)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Machine: {cpu_vendor()} {cpu_model()} ({flags}), torch {torch.__version__}, {args.threads} thread(s), "
          f"{torch.backends.quantized.engine} int8 engine; {now}; load {os.getloadavg()[0]:.2f}.")
    missing = [lang for lang in langs if lang not in found]
    missing = f" (not found: {', '.join(missing)})" if missing else ""
    print(f"{len(models)} models under {prefix}; {len(texts)} texts: {args.per_lang} SIB-200 test sentences "
          f"each of {', '.join(found)}{missing}; mean pooling; cosine to fp32 in float64 (min / mean over texts).\n")
    print("| model | int8 min | int8 mean | bf16 min | bf16 mean | int8 min, random ids | int8 mean, random ids "
          "| check_int8 (16 probe sentences) | auto |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    rows, t0 = {}, time.perf_counter()
    for path in models:
        r = rows[path] = model_row(path, texts, args.threads)
        auto = "int8" if r["check"] >= INT8_PROBE_MIN_COSINE else "float"
        print(f"| {os.path.relpath(path, prefix)} | " + " | ".join(f"{r[c][0]:.6f} | {r[c][1]:.6f}" for c in COLUMNS)
              + f" | {r['check']:.6f} | {auto} |", flush=True)

    print(f"\n| over {len(models)} models | min of per-model min | median of per-model min | "
          f"median of per-model mean | models with min ≥ {MIN_COSINE} |")
    print("|---|---:|---:|---:|---:|")
    for c in COLUMNS:
        mins, means = [r[c][0] for r in rows.values()], [r[c][1] for r in rows.values()]
        ok = sum(m >= MIN_COSINE for m in mins)
        print(f"| {c} | {min(mins):.6f} | {statistics.median(mins):.6f} | {statistics.median(means):.6f} | "
              f"{ok}/{len(mins)} ({ok / len(mins):.0%}) |")
    on = [r for r in rows.values() if r["check"] >= INT8_PROBE_MIN_COSINE]
    below = [r for r in rows.values() if r["int8"][0] < MIN_COSINE]
    gap = max(r["check"] - r["int8"][0] for r in rows.values())
    print(f"\n`dtype=\"auto\"` on a machine whose calibration says int8: {len(on)}/{len(rows)} models pass the "
          f"probe check (≥ {INT8_PROBE_MIN_COSINE:.4f}) and run int8, {sum(r['int8'][0] >= MIN_COSINE for r in on)} "
          f"of them keep min ≥ {MIN_COSINE} on the texts above; {sum(r['check'] < INT8_PROBE_MIN_COSINE for r in below)}"
          f"/{len(below)} models below {MIN_COSINE} on the texts are kept on the float dtype. The probe's minimum "
          f"exceeds the texts' minimum by at most {gap:.5f}.")
    print(f"\n{time.perf_counter() - t0:.0f} s; load at the end {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
