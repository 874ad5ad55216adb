"""Recipes resolve and validate; schedules at key points and phase boundaries."""

import dataclasses
import math

import pytest

from mmbert.train import schedules as S
from mmbert.train.recipe import (RECIPES, Phase, Recipe, RecipeError, get_recipe, resolve_languages,
                                 select_tracks, validate_recipe)


def _phase(**kw):
    base = dict(name="p", tokens=1000, seq_len=16, languages="all", temperature=0.5, mask_rate=0.3,
                global_rope_theta=1e4, local_rope_theta=1e4, lr_peak=1e-3, batch_tokens=64)
    base.update(kw)
    return Phase(**base)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_shipped_recipe_resolves_validates_and_roundtrips(name):
    r = get_recipe(name)
    assert isinstance(r, Recipe) and r.name == name
    validate_recipe(r)
    assert Recipe.from_dict(r.to_dict()) == r
    assert "|" in r.describe()
    for track in r.tracks().values():
        # every track's schedule is finite and positive where it should be
        s = S.track_schedule(track, points=50)
        assert all(math.isfinite(x) and x >= 0 for x in s["lr"])
        assert all(0 < m < 1 for m in s["mask_rate"])


def test_mmbert_paper_numbers():
    r = get_recipe("mmbert")
    pre, mid = r.phases
    assert (pre.seq_len, pre.temperature, pre.mask_rate, pre.global_rope_theta) == (1024, 0.7, 0.30, 1e4)
    assert (mid.seq_len, mid.temperature, mid.mask_rate) == (8192, 0.5, 0.15)
    assert (mid.global_rope_theta, mid.local_rope_theta) == (160_000, 160_000)
    assert set(r.variants) == {"decay-eng", "decay-cont", "decay-all"}
    for (v,) in r.variants.values():
        assert v.mask_rate == 0.05 and v.lr_decay == "1-sqrt" and v.lr_final_fraction == 0.02
    assert r.variants["decay-all"][0].temperature == 0.3
    assert r.betas == (0.9, 0.95) and r.eps == 1e-8 and pre.lr_peak == 8e-4
    assert get_recipe("decay-eng").variants.keys() == {"decay-eng"}


def test_cpu_demo_keeps_the_shape_of_mmbert():
    demo, paper = get_recipe("cpu-demo"), get_recipe("mmbert")
    for a, b in zip(demo.all_phases(), paper.all_phases()):
        # documented deviation (cpu_demo's docstring): Decay-Cont keeps the mid-training τ 0.5
        tau = demo.phases[1].temperature if a.name == "decay-cont" else b.temperature
        assert (a.name, a.temperature, a.mask_rate, a.lr_decay) == (b.name, tau, b.mask_rate, b.lr_decay)
        assert (a.global_rope_theta, a.local_rope_theta) == (b.global_rope_theta, b.local_rope_theta)
    assert demo.phases[1].seq_len > demo.phases[0].seq_len
    assert demo.phases[0].tokens > demo.phases[1].tokens > demo.variants["decay-all"][0].tokens


@pytest.mark.parametrize("change, match", [
    (dict(tokens=0), "no tokens"),
    (dict(temperature=0.0), "τ must be > 0"),
    (dict(mask_rate=1.0), r"mask_rate must be in \(0, 1\)"),
    (dict(mask_rate=0.0), r"mask_rate must be in \(0, 1\)"),
    (dict(lr_decay="cosine"), "lr_decay must be one of"),
    (dict(languages="top:x"), "tier spec"),
    (dict(languages=()), "languages is empty"),
    (dict(lr_warmup_tokens=800, lr_decay="linear", lr_decay_tokens=300), "exceed"),
    (dict(batch_tokens=8), "at least one row"),
])
def test_bad_phase_is_one_clear_error(change, match):
    with pytest.raises(RecipeError, match=match):
        Recipe("bad", phases=(_phase(**change),))


def test_decay_phase_with_no_tokens_and_seq_len_above_model():
    r = get_recipe("mmbert")
    with pytest.raises(RecipeError, match="decay-all.*no tokens"):
        r.replace(variants={"decay-all": (dataclasses.replace(r.variants["decay-all"][0], tokens=0),)})
    with pytest.raises(RecipeError, match="max_position_embeddings 1024"):
        validate_recipe(r, max_position_embeddings=1024)
    with pytest.raises(RecipeError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="not in recipe"):
        select_tracks(r, ["nope"])
    assert set(select_tracks(r, ["decay-eng"])) == {"decay-eng"}
    assert set(select_tracks(r, ["mid"])) == set()
    assert set(select_tracks(get_recipe("modernbert"), ["decay"])) == {"main"}


def test_resolve_languages_tiers():
    counts = {"eng_Latn": 100, "fra_Latn": 50, "deu_Latn": 50, "yor_Latn": 5}
    assert resolve_languages("all", counts) == sorted(counts)
    assert resolve_languages("top:2", counts) == ["deu_Latn", "eng_Latn"]  # tie broken by name
    assert resolve_languages("min:50", counts) == ["deu_Latn", "eng_Latn", "fra_Latn"]
    assert resolve_languages(("yor_Latn",), counts) == ["yor_Latn"]
    with pytest.raises(ValueError, match="xxx_Latn"):
        resolve_languages(("xxx_Latn",), counts)
    with pytest.raises(ValueError, match="min:1000"):
        resolve_languages("min:1000", counts)
    with pytest.raises(RecipeError, match="tier spec"):
        resolve_languages("min-tokens:5", counts)


def test_lr_warmup_stable_and_decay_key_points():
    p = _phase(tokens=1000, lr_peak=1.0, lr_warmup_tokens=100, lr_decay="1-sqrt", lr_decay_tokens=400,
               lr_final_fraction=0.1)
    # approx (default rel 1e-6) where the schedule's float64 formula rounds: a few ops, ≲ 1e-15 off
    assert S.lr_at(p, 0) == 0.0
    assert S.lr_at(p, 50) == pytest.approx(0.5)
    assert S.lr_at(p, 100) == 1.0 and S.lr_at(p, 600) == 1.0
    # 1-sqrt: a quarter into the decay the LR has dropped by half of (1 - f)
    assert S.lr_at(p, 700) == pytest.approx(0.1 + 0.9 * (1 - 0.5))
    assert S.lr_at(p, 1000) == pytest.approx(0.1)
    lin = dataclasses.replace(p, lr_decay="linear")
    assert S.lr_at(lin, 700) == pytest.approx(0.1 + 0.9 * 0.75)
    assert S.lr_at(lin, 1000) == pytest.approx(0.1)
    # 1-sqrt stays below linear inside the decay (it drops faster at first)
    assert all(S.lr_at(p, t) <= S.lr_at(lin, t) + 1e-12 for t in range(600, 1001, 20))  # 1e-12: float64 rounding
    # whole-phase decay when lr_decay_tokens is None
    whole = dataclasses.replace(p, lr_warmup_tokens=0, lr_decay_tokens=None)
    assert S.lr_at(whole, 0) == 1.0 and S.lr_at(whole, 250) == pytest.approx(0.1 + 0.9 * 0.5)


def test_batch_warmup_and_rows():
    p = _phase(tokens=1000, seq_len=16, batch_tokens=160, batch_start_tokens=32, batch_warmup_tokens=400)
    assert S.batch_tokens_at(p, 0) == 32
    assert S.batch_tokens_at(p, 200) == 96
    assert S.batch_tokens_at(p, 400) == 160 and S.batch_tokens_at(p, 999) == 160
    assert S.batch_rows_at(p, 0) == 2 and S.batch_rows_at(p, 400) == 10
    assert S.batch_rows_at(p, 0, granularity=4) == 4  # at least one granule
    assert S.batch_rows_at(p, 400, granularity=4) == 8
    # monotone non-decreasing during warm-up
    rows = [S.batch_rows_at(p, t) for t in range(0, 1000, 10)]
    assert rows == sorted(rows)


def test_phase_boundaries_across_the_mmbert_track():
    r = get_recipe("cpu-demo")
    track = r.tracks()["decay-all"]
    pre, mid, dec = track
    b1, b2 = pre.tokens, pre.tokens + mid.tokens
    assert S.locate(track, 0) == (0, 0)
    assert S.locate(track, b1 - 1) == (0, b1 - 1)
    assert S.locate(track, b1) == (1, 0)  # exactly at the boundary: the next phase
    assert S.locate(track, b2) == (2, 0)
    assert S.locate(track, b2 + dec.tokens + 5) == (2, dec.tokens)
    # values just before/after each boundary: mask 0.30 → 0.15 → 0.05, τ 0.7 → 0.5 → 0.3
    def at(tok):
        i, t = S.locate(track, tok)
        return S.mask_rate_at(track[i], t), S.temperature_at(track[i], t), S.lr_at(track[i], t)
    assert at(b1 - 1)[:2] == (0.30, 0.7) and at(b1)[:2] == (0.15, 0.5)
    assert at(b2 - 1)[:2] == (0.15, 0.5) and at(b2)[:2] == (0.05, 0.3)
    # LR: peak across the pretrain→mid boundary, decays from peak to 0.02× in the last phase
    # (approx: the float64 schedule formula rounds, ≲ 1e-15 relative ≪ approx's default 1e-6)
    assert at(b1 - 1)[2] == pytest.approx(pre.lr_peak) and at(b1)[2] == pytest.approx(mid.lr_peak)
    assert at(b2)[2] == pytest.approx(dec.lr_peak)
    assert S.lr_at(dec, dec.tokens) == pytest.approx(0.02 * dec.lr_peak)


def test_plot_schedules(tmp_path):
    S.plot_schedules(get_recipe("cpu-demo"), tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000
