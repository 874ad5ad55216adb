"""The end-to-end demo pipeline on a tiny hand-written corpus and a tiny recipe (fast), and the
README's main command on the embedded corpus (slow, opt-in)."""

import dataclasses
import json
import os
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


def test_demo_pipeline_end_to_end_and_reuse(tmp_path):
    from mmbert.demo import run_demo

    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(tiny_demo_recipe().to_json())
    out = tmp_path / "demo"
    report = run_demo(out, corpus=corpus, data_dir=tmp_path / "no-eval-data", vocab_size=512,
                      recipe=str(recipe), progress=False, log=lambda m: None)
    text = report.read_text()
    # every stage ran and the report carries this run's numbers and plots
    mlm = json.loads((out / "eval" / "mlm.json").read_text())
    assert set(mlm) == {"mid", "decay-eng", "decay-cont", "decay-all", "ties-merge"}
    assert f"{mlm['ties-merge']['macro']['accuracy']:.4f}" in text
    for img in ("report_files/sampling.png", "report_files/variants_mlm.png"):
        assert (out / img).stat().st_size > 5000 and img in text
    assert (out / "report.html").read_text().count("<img") >= 3
    # the merged model is a transformers-loadable directory with the tokenizer
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    AutoModelForMaskedLM.from_pretrained(out / "merged" / "model")
    AutoTokenizer.from_pretrained(out / "merged" / "model")
    # decay-only languages are reported as their own tier
    assert "decay-only" in mlm["decay-all"]["tiers"]
    # re-running reuses every finished stage
    logs = []
    run_demo(out, corpus=corpus, data_dir=tmp_path / "no-eval-data", vocab_size=512, recipe=str(recipe),
             progress=False, log=logs.append)
    assert sum("reusing" in m for m in logs) == 6


@pytest.mark.slow
def test_readme_main_command_runs_demo(tmp_path):
    """`make demo` from the README, on the embedded corpus, in a fresh clone (≈20+ minutes)."""
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = dict(os.environ, VENV=str(Path(sys.prefix)))  # reuse this environment's packages
    subprocess.run(["make", "demo", f"VENV={sys.prefix}"], cwd=clone, check=True, env=env, timeout=3600)
    assert (clone / "out" / "demo" / "report.md").is_file()
