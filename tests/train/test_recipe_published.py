"""The `mmbert` and `mmbert-small` recipes equal the published configs, value by value.

PUBLISHED is transcribed by hand from JHU-CLSP/mmBERT (commit 108ffb3): configs/mmBERT-{base,small}
{,-ext,-decay}.yaml and statistics/language_counts.csv; each entry names the file and field it came
from. Values the YAMLs do not hold (token budgets of the first phase, τ) come from the paper
(arXiv:2509.06888) and are marked so. docs/train.md shows the same table for readers.
"""

import csv
import math
import os
from pathlib import Path

import pytest

from mmbert.train import schedules as S
from mmbert.train.recipe import PUBLISHED_SHARES, Phase, Recipe, RecipeError, get_recipe, resolve_languages

B = 10**9
# (recipe, phase) → {field: (value, source)}
PUBLISHED = {
    ("mmbert", "pretrain"): {
        "tokens": (2300 * B, "paper §3 (2.3T); mmBERT-small-ext.yaml max_duration 2.9T − 600B"),
        "seq_len": (1024, "mmBERT-base.yaml train_loader.dataset.max_seq_len"),
        "mask_rate": (0.30, "paper §3 (30%); mmBERT-small.yaml mlm_probability 0.3 (base yaml says 0.25)"),
        "temperature": (0.7, "paper §3; README 'Temperature Annealing 0.7 → 0.5 → 0.3'"),
        "global_rope_theta": (10_000.0, "mmBERT-base.yaml model_config.rotary_emb_base"),
        "local_rope_theta": (10_000.0, "mmBERT-base.yaml model_config.local_attn_rotary_emb_base"),
        "lr_peak": (8e-4, "mmBERT-base.yaml optimizer.lr"),
        "weight_decay": (8e-5, "mmBERT-base.yaml optimizer.weight_decay"),
        "lr_warmup_tokens": (3 * B, "mmBERT-base.yaml scheduler.t_warmup 3000000000tok"),
        "lr_decay": ("none", "mmBERT-base.yaml scheduler warmup_stable_decay, t_decay 0tok"),
        "batch_tokens": (4608 * 1024, "mmBERT-base.yaml global_train_batch_size 4608 × max_seq_len"),
        "batch_warmup_tokens": (60 * B, "mmBERT-base.yaml train_loader.batch_size_warmup_tokens 60B"),
        "batch_start_tokens": (384 * 1024, "batch_size_warmup_min_size 48 rows per GPU × 8 GPUs"),
        "attention_output_dropout": (0.1, "mmBERT-base.yaml model_config.attn_out_dropout_prob"),
    },
    ("mmbert", "mid"): {
        "tokens": (600 * B, "mmBERT-base-ext.yaml max_duration 600000000000tok"),
        "seq_len": (8192, "mmBERT-base-ext.yaml max_seq_len"),
        "mask_rate": (0.15, "mmBERT-base-ext.yaml mlm_probability"),
        "temperature": (0.5, "paper §3"),
        "global_rope_theta": (160_000.0, "mmBERT-base-ext.yaml rotary_emb_base"),
        "local_rope_theta": (160_000.0, "mmBERT-base-ext.yaml local_attn_rotary_emb_base"),
        "lr_peak": (8e-4, "mmBERT-base-ext.yaml optimizer.lr"),
        "lr_warmup_tokens": (0, "mmBERT-base-ext.yaml scheduler.t_warmup 0tok"),
        "batch_warmup_tokens": (0, "mmBERT-base-ext.yaml batch_size_warmup_tokens 0tok"),
        "attention_output_dropout": (0.1, "mmBERT-base-ext.yaml attn_out_dropout_prob"),
    },
    ("mmbert", "decay-all"): {
        "tokens": (100 * B, "mmBERT-base-decay.yaml max_duration 100000000000tok"),
        "mask_rate": (0.05, "mmBERT-base-decay.yaml mlm_probability"),
        "temperature": (0.3, "paper §3; decay data card"),
        "lr_decay": ("1-sqrt", "mmBERT-base-decay.yaml scheduler.name one_minus_sqrt"),
        "lr_final_fraction": (0.02, "mmBERT-base-decay.yaml scheduler.alpha_f"),
        "lr_decay_tokens": (None, "mmBERT-base-decay.yaml t_decay 100B = the whole phase"),
        "global_rope_theta": (160_000.0, "mmBERT-base-decay.yaml rotary_emb_base"),
    },
    ("mmbert", "decay-cont"): {
        "temperature": (0.3, "decay data card τ 0.3; language_counts.csv decay-mid vs ext slope 0.62"),
    },
    ("mmbert-small", "pretrain"): {
        "lr_peak": (8e-4, "mmBERT-small.yaml optimizer.lr"),
        "weight_decay": (8e-5, "mmBERT-small.yaml optimizer.weight_decay"),
        "lr_warmup_tokens": (4 * B, "mmBERT-small.yaml scheduler.t_warmup 4000000000tok"),
        "batch_warmup_tokens": (100 * B, "mmBERT-small.yaml batch_size_warmup_tokens 100B"),
        "mask_rate": (0.30, "mmBERT-small.yaml mlm_probability 0.3"),
    },
    ("mmbert-small", "mid"): {
        "lr_peak": (4e-4, "mmBERT-small-ext.yaml optimizer.lr"),
        "weight_decay": (4e-5, "mmBERT-small-ext.yaml optimizer.weight_decay"),
        "tokens": (600 * B, "mmBERT-small-ext.yaml max_duration 2.9T − 2.3T"),
    },
    ("mmbert-small", "decay-all"): {
        "lr_peak": (4e-4, "mmBERT-small-decay.yaml optimizer.lr"),
        "weight_decay": (4e-5, "mmBERT-small-decay.yaml optimizer.weight_decay"),
        "lr_decay": ("linear", "mmBERT-small-decay.yaml scheduler warmup_stable_decay (linear decay)"),
        "lr_final_fraction": (0.04, "mmBERT-small-decay.yaml scheduler.alpha_f"),
        "tokens": (100 * B, "mmBERT-small-decay.yaml t_decay 100B; max_duration 3.0T − 2.9T"),
    },
}
# language_counts.csv: share of a phase's tokens (column) held by English and by code
PUBLISHED_SHARE_TABLE = {  # phase → (csv column, English, code)
    "pretrain": ("pretrain", 0.3451, 0.0513), "mid": ("ext", 0.1214, 0.0333),
    "decay-eng": ("decay-eng", 0.1789, 0.0312), "decay-cont": ("decay-mid", 0.1319, 0.0315),
    "decay-all": ("decay-all", 0.1015, 0.0551),
}
REFERENCE_CSV = Path(os.environ.get("MMBERT_REFERENCE_DIR", Path(__file__).resolve().parents[3] /
                                    "shared/data/reference")) / "mmbert_language_counts.csv"


def _phase(recipe: Recipe, name: str) -> Phase:
    return next(p for p in recipe.all_phases() if p.name == name)


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_recipe_equals_the_published_configs(key):
    r = get_recipe(key[0])
    p = _phase(r, key[1])
    for field, (value, source) in PUBLISHED[key].items():
        assert getattr(p, field) == value, f"{key} {field}: {getattr(p, field)!r} ≠ {value!r} ({source})"


@pytest.mark.parametrize("name", ["mmbert", "mmbert-small"])
def test_published_optimizer_and_no_clipping(name):
    r = get_recipe(name)
    # mmBERT-*.yaml optimizer: decoupled_stableadamw, betas [0.9, 0.95], eps 1e-8; no
    # algorithms.gradient_clipping (ModernBERT's main.py refuses it with StableAdamW)
    assert (r.betas, r.eps, r.grad_clip) == ((0.9, 0.95), 1e-8, 0.0)
    assert r.preset == ("mmbert-small" if name == "mmbert-small" else "mmbert-base")
    # every phase: attn_out_dropout_prob 0.1 with attention_probs_dropout_prob 0 (the preset's)
    assert {p.attention_output_dropout for p in r.all_phases()} == {0.1}
    from mmbert import EncoderConfig
    assert EncoderConfig.from_preset(r.preset).attention_dropout == 0.0


@pytest.mark.parametrize("phase", sorted(PUBLISHED_SHARE_TABLE))
def test_english_and_code_shares_are_the_published_ones(phase):
    _, eng, code = PUBLISHED_SHARE_TABLE[phase]
    for name in ("mmbert", "mmbert-small"):
        assert dict(_phase(get_recipe(name), phase).shares) == {"eng_Latn": eng, "code": code}


def test_shares_recomputed_from_the_released_counts():
    if not REFERENCE_CSV.is_file():
        pytest.skip(f"{REFERENCE_CSV} absent (set MMBERT_REFERENCE_DIR)")
    rows = list(csv.DictReader(REFERENCE_CSV.open()))
    for phase, (col, eng, code) in PUBLISHED_SHARE_TABLE.items():
        total = sum(float(r[col]) for r in rows)
        got = {r["language"]: float(r[col]) / total for r in rows if r["language"] in ("eng", "code")}
        # 4 decimals, as transcribed: rounding error ≤ 5e-5
        assert abs(got["eng"] - eng) <= 5e-5 and abs(got["code"] - code) <= 5e-5, (phase, got)
        assert PUBLISHED_SHARES[phase] == {"eng_Latn": eng, "code": code}
    # language counts per phase: the τ-sampled tier sizes + English + code
    n = {c: sum(1 for r in rows if float(r[c]) > 0) for c in ("pretrain", "ext", "decay-all")}
    assert n == {"pretrain": 59 + 2, "ext": 108 + 2, "decay-all": 1832 + 2}
    # Decay-Cont's τ: slope of log(decay-mid) on log(ext) over the shared languages ≈ 0.3/0.5
    pts = [(math.log(float(r["ext"])), math.log(float(r["decay-mid"]))) for r in rows
           if float(r["ext"]) > 0 and float(r["decay-mid"]) > 0 and r["language"] not in ("eng", "code")]
    mx, my = (sum(v) / len(pts) for v in zip(*pts))
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    # a least-squares slope over released (rounded) counts of ~100 languages; 0.05 still separates
    # 0.6 from the neighbouring candidates τ_mid/τ_ext = 0.3/0.7 ≈ 0.43 and 1.0
    assert abs(slope - 0.3 / 0.5) < 0.05, slope


def test_stepwise_batch_warmup_matches_modernberts_scheduler():
    """Every size start, start+inc, …, end−inc runs for the same number of optimizer steps, and the
    warm-up's tokens are spent: simulate the loop's steps and count."""
    p = Phase("p", tokens=10**6, seq_len=8, languages="all", temperature=0.5, mask_rate=0.3,
              global_rope_theta=1e4, local_rope_theta=1e4, lr_peak=1e-3, batch_tokens=8 * 48,
              batch_warmup_tokens=120_000, batch_start_tokens=8 * 8, batch_warmup_increment_tokens=8 * 8)
    t, steps = 0, {}
    while t < p.batch_warmup_tokens:
        b = S.batch_tokens_at(p, t)
        steps[b] = steps.get(b, 0) + 1
        t += b
    assert sorted(steps) == list(range(64, 384, 64))  # 64, 128, …, 320; then 384
    assert max(steps.values()) - min(steps.values()) <= 1  # equal steps per size (±1 at a threshold)
    assert S.batch_tokens_at(p, p.batch_warmup_tokens) == 384
    mm = _phase(get_recipe("mmbert"), "pretrain")
    assert S.batch_tokens_at(mm, 0) == 384 * 1024 and S.batch_tokens_at(mm, 59.99 * B) == 4224 * 1024
    with pytest.raises(RecipeError, match="must divide"):
        Recipe("bad", phases=(Phase("p", tokens=10**6, seq_len=8, languages="all", temperature=0.5,
                                    mask_rate=0.3, global_rope_theta=1e4, local_rope_theta=1e4, lr_peak=1e-3,
                                    batch_tokens=8 * 48, batch_warmup_tokens=1000, batch_start_tokens=8 * 8,
                                    batch_warmup_increment_tokens=8 * 7),))


def test_fixed_shares_and_tiers_resolve_on_shards():
    counts = {"eng_Latn": 10**6, "code": 5 * 10**5, "deu_Latn": 4 * 10**5, "fra_Latn": 3 * 10**5,
              "yor_Latn": 10**3}
    # the tier ranks the τ-sampled languages only; the share sources are added
    assert resolve_languages("top:2", counts, {"eng_Latn": 0.3, "code": 0.05}) == \
        ["code", "deu_Latn", "eng_Latn", "fra_Latn"]
    from mmbert.data.sampling import SamplingError, plan_phase
    plan = plan_phase(counts, "all", 0.5, shares={"eng_Latn": 0.3, "code": 0.05}, budget=10**6, epoch_cap=2.0)
    p = plan.as_dict()
    # exact for the fixed shares; the float64 sum of 6 shares is within a few eps64 of 1
    assert p["eng_Latn"] == 0.3 and p["code"] == 0.05 and sum(p.values()) == pytest.approx(1.0, abs=1e-12)
    # the rest keeps p ∝ n^τ among the τ-sampled languages … except where the epoch cap binds
    assert p["yor_Latn"] * 10**6 <= 2.0 * 10**3 * (1 + 1e-9)  # 1e-9: float64 rounding of the capped share
    assert p["deu_Latn"] / p["fra_Latn"] == pytest.approx((4 / 3) ** 0.5, rel=1e-9)  # float64 powers: ~eps64
    with pytest.raises(SamplingError, match="code.*no training tokens"):
        resolve_languages("all", {"eng_Latn": 10}, {"eng_Latn": 0.3, "code": 0.05})
    with pytest.raises(RecipeError, match="sum to"):
        Recipe("bad", phases=(Phase("p", tokens=100, seq_len=8, languages="all", temperature=0.5, mask_rate=0.3,
                                    global_rope_theta=1e4, local_rope_theta=1e4, lr_peak=1e-3, batch_tokens=8,
                                    shares={"a": 0.6, "b": 0.5}),))


def test_attention_output_dropout_is_a_phase_setting_apart_from_the_probabilities():
    import torch

    from mmbert import EncoderConfig
    from mmbert.model.encoder import build_model

    torch.manual_seed(0)
    model = build_model(EncoderConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=2,
                                                  max_position_embeddings=32), head="mlm")
    ids = torch.randint(5, 64, (2, 16))
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert torch.equal(a, b)  # preset dropout 0: training is deterministic
    model.set_attention_output_dropout(0.5)
    assert model.config.attention_dropout == 0.0  # the config (what export writes) is untouched
    assert not torch.equal(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_shares_epoch_cap_and_dropout_reach_the_training_loop(shards, tmp_path):
    """A recipe phase with a fixed English share, an epoch cap and attention-output dropout trains,
    and the loader samples with exactly that plan (recorded in its checkpointed state)."""
    import dataclasses
    import json

    from mmbert.train.loop import train
    from tinyrun import tiny_config, tiny_recipe

    base = tiny_recipe(scale=0.25)
    pre = dataclasses.replace(base.phases[0], languages="top:2", shares={"eng_Latn": 0.5}, epoch_cap=50.0,
                              attention_output_dropout=0.1)
    rec = base.replace(name="shares", phases=(pre,), variants={})
    out = tmp_path / "run"
    res = train(rec, tiny_config(), shards, out, micro_batch_tokens=128, progress=False, eval=False, plots=False)
    assert res["tracks"]["main"]["step"] > 0
    from mmbert.train.checkpoint import _torch_load, latest_checkpoint
    ckpt = latest_checkpoint(out / "checkpoints" / "main")
    assert ckpt is not None
    state = _torch_load(ckpt / "loader.pt")
    probs = dict(zip(state["plan"]["languages"], state["plan"]["probs"]))
    assert state["phase"]["shares"] == {"eng_Latn": 0.5} and probs["eng_Latn"] == 0.5
    # top:2 ranks the languages other than English: fra_Latn and deu_Latn
    assert sorted(probs) == ["deu_Latn", "eng_Latn", "fra_Latn"]
