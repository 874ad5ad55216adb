"""The reproduction study's machinery at toy size: three arms × two seeds trained through the real
`mmbert pretrain` processes on synthetic shards, TIES, MLM scoring, logs, the page — and the
statistics it states conclusions with."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from tinyrun import tiny_recipe, write_synthetic_shards  # noqa: E402

from mmbert import study  # noqa: E402
from mmbert.train.recipe import get_recipe  # noqa: E402


def toy_recipes(root: Path) -> dict[str, str]:
    base = tiny_recipe(scale=0.5)
    dec = base.variants["decay-all"][0]
    eng = dataclasses.replace(dec, name="decay-eng", languages="top:3", language_weights={"eng_Latn": 4.0})
    cont = base.variants["decay-cont"][0]
    recipe = base.replace(name="toy-recipe", variants={"decay-eng": (eng,), "decay-cont": (cont,),
                                                       "decay-all": (dec,)})
    const = recipe.replace(name="toy-constant-mask",
                           phases=tuple(dataclasses.replace(p, mask_rate=0.15) for p in recipe.phases),
                           variants={"decay-all": (dataclasses.replace(dec, mask_rate=0.15),)})
    flat = lambda p: dataclasses.replace(p, languages="all", temperature=0.7)  # noqa: E731
    baseline = const.replace(name="toy-mbert-baseline", phases=tuple(flat(p) for p in const.phases),
                             variants={"decay-all": (flat(const.variants["decay-all"][0]),)})
    out = {}
    for arm, rec in (("recipe", recipe), ("constant-mask", const), ("mbert-baseline", baseline)):
        path = root / f"{rec.name}.json"
        path.write_text(rec.to_json())
        out[arm] = str(path)
    return out


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_synthetic_shards(root / "shards")
    cfg = study.StudyConfig(shards=root / "shards", out=root / "out", logs=root / "logs", seeds=(0, 1), jobs=2,
                            threads=1, sib=False, recipes=toy_recipes(root), mlm_tokens_per_lang=256)
    messages = []
    study.run_study(cfg, log=messages.append)
    return cfg, messages


def test_every_arm_and_seed_is_trained_merged_scored_and_logged(toy_study):
    cfg, _ = toy_study
    logs = sorted(p.name for p in cfg.logs.glob("*.json"))
    assert logs == [f"{a}-seed{s}.json" for a in sorted(study.ARMS) for s in (0, 1)]
    for arm in study.ARMS:
        for seed in (0, 1):
            d = json.loads((cfg.logs / f"{arm}-seed{seed}.json").read_text())
            assert set(d["mlm"]) == set(study.models_of(arm))
            rec = get_recipe(cfg.recipe(arm))
            assert d["train"]["tokens_trained"] == (sum(p.tokens for p in rec.phases)
                                                    + sum(p.tokens for v in rec.variants.values() for p in v))
            assert d["train"]["wall_s"] > 0 and d["train"]["cpu_s"] > 0
            # expected tokens per tier add up to the track's budget
            tt = d["train"]["tier_tokens"]["decay-all"]
            track = rec.phases + rec.variants["decay-all"]
            assert sum(tt[t] for t in study.TIERS) == pytest.approx(sum(p.tokens for p in track), abs=3)
            if arm != "mbert-baseline":  # the decay-only language gets tokens only in the decay phase
                assert 0 < tt["decay-only"] < rec.variants["decay-all"][0].tokens

            langs = d["mlm"]["decay-all"]["languages"]
            # tiers come from the recipe arm: top:2 pretrain, the 3rd language at mid, the 4th decay-only
            assert sorted(v["tier"] for v in langs.values()) == ["decay-only", "mid", "pretrain", "pretrain"]
            assert all(0.0 <= v["accuracy"] <= 1.0 for v in langs.values())
    assert (cfg.run_dir("recipe", 0) / "merged" / "ties" / "config.json").is_file()
    tokens = {arm: json.loads((cfg.logs / f"{arm}-seed0.json").read_text())["train"]["tier_tokens"]["decay-all"]
              for arm in study.ARMS}
    assert tokens["mbert-baseline"]["decay-only"] > tokens["recipe"]["decay-only"]  # all languages from step 1
    assert tokens["recipe"] == tokens["constant-mask"]  # only the mask differs
    a = json.loads((cfg.logs / "constant-mask-seed0.json").read_text())["train"]
    b = json.loads((cfg.logs / "recipe-seed0.json").read_text())["train"]
    assert a["recipe"] == "toy-constant-mask" and b["recipe"] == "toy-recipe"


def test_a_second_run_reuses_everything(toy_study):
    cfg, _ = toy_study
    before = {p: p.read_text() for p in cfg.logs.glob("*.json")}
    written = {p: p.stat().st_mtime_ns for p in before}
    timing = (cfg.run_dir("recipe", 1) / "study_timing.json").read_text()
    messages = []
    study.run_study(cfg, log=messages.append)
    assert not [m for m in messages if "training" in m or "MLM" in m or "TIES" in m], messages
    assert (cfg.run_dir("recipe", 1) / "study_timing.json").read_text() == timing
    assert {p: p.read_text() for p in cfg.logs.glob("*.json")} == before
    assert {p: p.stat().st_mtime_ns for p in before} == written  # nothing rewritten either


def test_report_is_built_from_the_logs_alone(toy_study, tmp_path):
    cfg, _ = toy_study
    page = study.write_report(cfg.logs, tmp_path / "page.md", log=lambda m: None)
    text = page.read_text()
    for needle in ("## 1. Languages seen only in the decay phase", "## 2. Inverse mask schedule",
                   "## 3. Annealed sampling", "ties-merge − mid", "constant-mask − mbert-baseline",
                   "What the seeds allow us to say"):
        assert needle in text
    pngs = sorted(p.name for p in (tmp_path / "page_files").glob("*.png"))
    assert pngs == ["decay_variants.png", "training_loss.png"]
    # the table's numbers are the logs' numbers
    d0, d1 = (json.loads((cfg.logs / f"recipe-seed{s}.json").read_text()) for s in (0, 1))
    acc = [d["mlm"]["decay-all"]["languages"]["eng_Latn"]["accuracy"] * 100 for d in (d0, d1)]
    row = next(line for line in text.splitlines() if line.startswith("| decay-all |"))
    m, s = sum(acc) / 2, abs(acc[0] - acc[1]) / math.sqrt(2)
    assert f"{m:.2f} ± {s:.2f}" == row.split("|")[5].strip()


def test_missing_logs_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmbert study run"):
        study.load_logs(tmp_path)


def test_tier_scores_by_hand():
    mlm = {"languages": {
        "eng_Latn": {"accuracy": 0.5, "masked": 10, "tier": "pretrain"},
        "fra_Latn": {"accuracy": 0.3, "masked": 30, "tier": "pretrain"},
        "yor_Latn": {"accuracy": 0.1, "masked": 5, "tier": "decay-only"},
        "xxx_Latn": {"accuracy": float("nan"), "masked": 0, "tier": "decay-only"}}}
    s = study.tier_scores(mlm)
    assert s["pretrain"] == pytest.approx(0.4)
    assert s["pretrain (micro)"] == pytest.approx((5 + 9) / 40)
    assert s["decay-only"] == pytest.approx(0.1)  # a language with nothing masked is left out
    assert s["all (macro)"] == pytest.approx(0.3)
    assert s["English"] == 0.5


def test_paired_differences_and_the_bar_for_a_conclusion():
    p = study.paired([0.30, 0.32, 0.31], [0.20, 0.21, 0.22])
    assert p["diffs"] == pytest.approx([0.10, 0.11, 0.09])
    assert p["mean"] == pytest.approx(0.10) and p["std"] == pytest.approx(0.01)
    assert p["clear"]
    assert not study.paired([0.30, 0.10, 0.31], [0.20, 0.21, 0.22])["clear"]  # one seed disagrees
    assert not study.paired([0.21, 0.22, 0.30], [0.20, 0.21, 0.22])["clear"]  # |mean| < std
    assert not study.paired([0.3], [0.2])["clear"]  # one seed says nothing
    assert "opposite of the paper" in study._verdict(study.paired([0.1, 0.1], [0.2, 0.21]), +1, "x")
    assert "not separable" in study._verdict(study.paired([0.1, 0.3], [0.2, 0.2]), +1, "x")
    # consistent seeds, but both arms at SIB-200's majority class: no ranking is stated
    at_floor = study.paired([0.2492, 0.2493], [0.2500, 0.2501])
    assert at_floor["clear"]
    assert "no ranking" in study._verdict(at_floor, +1, "x", floor=(0.24925, 0.25005))
    assert "opposite" in study._verdict(at_floor, +1, "x", floor=(0.30, 0.31))


def test_sib_languages_spread_over_tiers(eval_data, tmp_path):
    """English plus at most 24 SIB-200 languages per tier, each a real SIB-200 language."""
    from mmbert.data.shards import ShardIndex
    from mmbert.eval import data as eval_data_mod

    shards = tmp_path / "shards"
    write_synthetic_shards(shards)  # eng/fra/deu/yor: pretrain, pretrain, mid, decay-only in the toy recipe
    cfg = study.StudyConfig(shards=shards, recipes=toy_recipes(tmp_path))
    index = ShardIndex.load(shards)
    tier_of = study.tier_of_languages(cfg, {lang: index.tokens(lang) for lang in index.languages})
    assert tier_of == {"eng_Latn": "pretrain", "fra_Latn": "pretrain", "deu_Latn": "mid",
                       "yor_Latn": "decay-only"}
    picked = study.sib_languages(eval_data, tier_of, per_tier=5)
    available = set(eval_data_mod.sib200_languages(eval_data))
    assert set(picked) <= available and "eng_Latn" in picked
    by_tier: dict[str, int] = {}
    for lang in picked:
        by_tier[tier_of.get(lang, "not in corpus")] = by_tier.get(tier_of.get(lang, "not in corpus"), 0) + 1
    assert by_tier["not in corpus"] == 5 and by_tier["pretrain"] >= 1  # eng_Latn and fra_Latn are in SIB
    assert all(n <= 5 for t, n in by_tier.items() if t != "pretrain") and by_tier["pretrain"] <= 6
