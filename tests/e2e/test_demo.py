"""The end-to-end demo pipeline on a tiny hand-written corpus and a tiny recipe (fast), and the
README's main command on the embedded corpus (slow, opt-in)."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert.train.recipe import Phase, Recipe

REPO = Path(__file__).resolve().parents[2]

SENTENCES = {
    "eng_Latn": "The river carries fresh water from the mountains down to the old harbour town.",
    "fra_Latn": "La rivière apporte l'eau fraîche des montagnes jusqu'au vieux port de la ville.",
    "deu_Latn": "Der Fluss bringt frisches Wasser aus den Bergen hinunter zur alten Hafenstadt.",
    "rus_Cyrl": "Река несёт свежую воду с гор вниз к старому портовому городу у моря.",
    "hin_Deva": "नदी पहाड़ों से ताज़ा पानी पुराने बंदरगाह शहर तक नीचे ले जाती है।",
    "tir_Ethi": "ወሓዚ ካብ ኣኽራን ጽሩይ ማይ ናብ ጥንታዊት ወደብ ከተማ የውርድ።",
}


def write_corpus(root: Path) -> None:
    for i, (lang, s) in enumerate(SENTENCES.items()):
        d = root / lang
        d.mkdir(parents=True)
        words = s.split()
        n_docs = 60 // (i + 1) + 6  # skewed sizes: tiers and τ matter
        with open(d / "docs.jsonl", "w") as f:
            for k in range(n_docs):
                text = " ".join(words[(k + j) % len(words)] for j in range(len(words) * 3))
                f.write(json.dumps({"text": text, "source": "test"}, ensure_ascii=False) + "\n")
    (root / "stats.json").write_text(json.dumps({"num_languages": len(SENTENCES), "total_bytes": 1,
                                                 "build_seconds": 0.0}))


def tiny_demo_recipe() -> Recipe:
    common = dict(global_rope_theta=10_000.0, local_rope_theta=10_000.0, lr_peak=3e-3, weight_decay=1e-4)
    pre = Phase("pretrain", tokens=32 * 8 * 6, seq_len=32, languages="top:3", temperature=0.7, mask_rate=0.3,
                batch_tokens=32 * 8, **common)
    mid = dataclasses.replace(pre, name="mid", tokens=64 * 4 * 3, seq_len=64, languages="top:5", temperature=0.5,
                              mask_rate=0.15, global_rope_theta=160_000.0, local_rope_theta=160_000.0,
                              batch_tokens=64 * 4)
    decay = dataclasses.replace(mid, name="decay-all", tokens=64 * 4 * 2, languages="all", temperature=0.3,
                                mask_rate=0.05, lr_decay="1-sqrt", lr_final_fraction=0.02)
    variants = {"decay-eng": (dataclasses.replace(decay, name="decay-eng", languages="top:5",
                                                  language_weights={"eng_Latn": 4.0}),),
                "decay-cont": (dataclasses.replace(decay, name="decay-cont", languages="top:5", temperature=0.5),),
                "decay-all": (decay,)}
    return Recipe("tiny-demo", phases=(pre, mid), variants=variants, preset="tiny",
                  eval_every_tokens=10**9, checkpoint_every_tokens=10**9, eval_tokens_per_lang=256,
                  log_every_steps=1)


def write_eval_data(root: Path) -> Path:
    """The eval harness's tiny data directory (every dataset folder in its real format, made-up rows)."""
    spec = importlib.util.spec_from_file_location("eval_fixtures", REPO / "tests" / "eval" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_fixture_data(root, n=8)


# an absolute path in text: after a space, quote, backtick, bracket or `=`, a / followed by a name and another /
ABSOLUTE = re.compile(r"(?:^|[\s`'\"(=\[])/[\w.-]+/", re.M)


def test_demo_pipeline_end_to_end_report_and_reuse(tmp_path):
    """The whole pipeline on a tiny corpus and recipe with a tiny eval data directory; the report says
    what was trained and what it cost, puts floors and sample sizes beside the scores, reads them,
    and names no absolute path; a second run reuses every stage."""
    from mmbert.apps.demo import STAGES, run_demo, write_report

    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(tiny_demo_recipe().to_json())
    data = write_eval_data(tmp_path / "eval-data")
    out = tmp_path / "demo"
    logs = []
    report = run_demo(out, corpus=corpus, data_dir=data, vocab_size=512, recipe=str(recipe), log=logs.append)
    # the console: the overall line (stage k of n, elapsed, ETA) at every stage, plain text, no bars
    for k, name in enumerate(STAGES, 1):
        assert any(m.startswith(f"demo [{k}/{len(STAGES)}] {name} ") and "elapsed" in m and "ETA" in m
                   for m in logs), name
    assert not any("\x1b" in m or "\r" in m for m in logs)
    assert sum(m.startswith("corpus:") for m in logs) <= 1  # the corpus summary at most once (reused here)
    assert not any(m.lstrip().startswith("| ") for m in logs)  # tables go to files, not the console
    text = report.read_text()
    html = (out / "report.html").read_text()

    # every stage ran and the report carries this run's numbers and plots
    mlm = json.loads((out / "eval" / "mlm.json").read_text())
    assert set(mlm) == {"mid", "decay-eng", "decay-cont", "decay-all", "ties-merge", "random-init"}
    assert "decay-only" in mlm["decay-all"]["tiers"]  # the tier names of the report
    for img in ("report_files/sampling.png", "report_files/variants_mlm.png", "run/plots/heldout.png"):
        assert (out / img).stat().st_size > 5000 and f"]({img})" in text
    assert html.count("<img") >= 6

    # what was trained and what it cost
    from mmbert.model import EncoderConfig

    cfg = EncoderConfig(**json.loads((out / "demo.json").read_text())["model"])
    n_all, n_body = cfg.num_parameters(), cfg.num_parameters(include_embeddings=False)
    assert f"{n_all:,} parameters" in text and f"{n_all - n_body:,} ({(n_all - n_body) / n_all:.0%})" in text
    total = sum(p.tokens for p in tiny_demo_recipe().all_phases())
    assert f"| **all phases** | {total:,} | {total:,} |" in text  # planned = trained
    for section in ("## What was trained", "## What it cost", "## Language tiers and sampling",
                    "## Held-out MLM by variant", "## Task suite", "## Reading", "## Use the merged model"):
        assert text.count(section) == 1, section
    for stage in STAGES:
        assert f"| {stage} |" in text
    assert "Machine:" in text and "CPU" in text

    # floors beside every score: the MLM table has the untrained model and the constant predictor ...
    r = mlm["random-init"]["macro"]["accuracy"]
    assert "| random-init (floor) |" in text and "| constant (floor) |" in text
    # ... and each task row its random-init score (computed in this run), chance and majority
    merged = json.loads((out / "eval" / "suite" / "results.json").read_text())
    rand = json.loads((out / "eval" / "suite-random-init" / "results.json").read_text())
    sib, sib_r = merged["tasks"]["sib200"], rand["tasks"]["sib200"]
    assert sib["floors"]["chance"] == 1 / 7  # exact: 1 / num_labels, and JSON round-trips floats
    row = next(ln for ln in text.splitlines() if ln.startswith("| sib200 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == [f"{100 * sib['average']['mean']:.1f}", f"{100 * sib_r['average']['mean']:.1f}",
                          f"{100 / 7:.1f}", f"{100 * sib['floors']['majority']:.1f}"]
    n = {v["n"] for v in sib["languages"].values()}
    assert cells[7] == str(n.pop()) and not n  # the sample size beside the per-language scores
    tat = next(ln for ln in text.splitlines() if ln.startswith("| tatoeba |"))
    assert "–" not in tat.split("|")[5]  # retrieval chance = 1 / candidates
    assert "### sib200" in text and "| language | tier | n |" in text
    assert r >= 0 and "## Reading" in text and ("at floor" in text or "above every floor" in text)
    assert "**Use `" in text  # which model to use
    assert "| prompt | ties-merge: top 5 | random-init: top 5 |" in text  # fill-mask beside its floor

    # one naming of the tiers, markdown rendered, no absolute path anywhere in the report
    assert not re.search(r"\b(high|low)\b", text)
    assert "`" not in html.split("<pre>")[0] and "<code>merged/model</code>" in html
    assert 'style="text-align:right"' in html and "<th>model</th>" in html
    for doc in (text, html, (out / "demo.json").read_text(), (out / "eval" / "suite" / "results.json").read_text()):
        assert str(tmp_path) not in doc and not ABSOLUTE.search(doc), ABSOLUTE.search(doc)

    # the merged model is a transformers-loadable directory with the tokenizer
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    AutoModelForMaskedLM.from_pretrained(out / "merged" / "model")
    AutoTokenizer.from_pretrained(out / "merged" / "model")
    # the report renders again from the files alone; a re-run reuses every finished stage
    assert write_report(out).read_text() == text
    logs.clear()
    run_demo(out, corpus=corpus, data_dir=data, vocab_size=512, recipe=str(recipe), log=logs.append)
    assert sum(" reused " in m for m in logs) == len(STAGES)


@pytest.mark.slow
def test_readme_main_command_runs_demo(tmp_path):
    """`make demo` from the README, on the embedded corpus, in a fresh clone (≈20+ minutes)."""
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = dict(os.environ, VENV=str(Path(sys.prefix)))  # reuse this environment's packages
    # `-o <venv>/.installed`: never re-run `pip install -e` from the clone into this environment — it would
    # point the shared editable install at a temporary directory that is deleted after the test
    env["PYTHONPATH"] = str(clone / "src")  # the clone's code, not this checkout's
    subprocess.run(["make", "-o", f"{sys.prefix}/.installed", "demo", f"VENV={sys.prefix}"], cwd=clone,
                   check=True, env=env, timeout=3600)
    assert (clone / "out" / "demo" / "report.md").is_file()
