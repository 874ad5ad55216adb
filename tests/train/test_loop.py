"""The training loop end to end on tiny synthetic shards: loss falls, golden losses, exact
kill-and-resume across phase boundaries and into a decay variant, run-dir guard, bad input."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from mmbert.train.loop import RunDirError, TrainingDiverged, train
from mmbert.train.recipe import RecipeError

from tinyrun import poison_loss_after, tiny_config, tiny_recipe

GOLDEN = Path(__file__).parent.parent / "assets" / "golden_losses_tiny.json"
KW = dict(micro_batch_tokens=128, progress=False)


def losses(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(ln)
        if r["type"] == "train":
            out.setdefault(r["track"], []).append((r["step"], r["loss"]))
    return out


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    res = train(tiny_recipe(), tiny_config(), shards, out, **KW)
    return out, res


def test_full_run_loss_falls_and_writes_the_run_dir(full_run):
    out, res = full_run
    assert set(res["tracks"]) == {"main", "decay-all", "decay-cont"}
    main = [l for _, l in losses(out)["main"]]
    assert len(main) >= 30
    first, last = sum(main[:5]) / 5, sum(main[-5:]) / 5
    assert last < first - 0.5, (first, last)
    for name in ("pretrain", "mid", "decay-all", "decay-cont"):
        assert (out / "export" / name / "model.safetensors").is_file()
        assert json.loads((out / "export" / name / "config.json").read_text())["model_type"] == "modernbert"
    mid_cfg = json.loads((out / "export" / "mid" / "config.json").read_text())
    assert mid_cfg["global_rope_theta"] == 160_000.0  # the θ switch reached the exported model
    pre_cfg = json.loads((out / "export" / "pretrain" / "config.json").read_text())
    assert pre_cfg["global_rope_theta"] == 10_000.0
    # each export's model card names the languages trained on so far (top:2 → top:3 → all)
    from mmbert.export.card import read_card

    cards = {name: read_card(out / "export" / name) for name in ("pretrain", "mid", "decay-all")}
    assert cards["pretrain"].languages == ["en", "fr"] and cards["mid"].languages == ["de", "en", "fr"]
    assert sorted(cards["decay-all"].languages) == ["de", "en", "fr", "yo"]
    assert (out / "export" / "decay-all" / "modules.json").is_file()
    for png in ("loss", "heldout", "schedules", "throughput"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 5000
    assert "| main |" in (out / "summary.md").read_text()
    evals = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in ln]
    assert {e["lang"] for e in evals} >= {"eng_Latn", "yor_Latn", "macro", "tier:pretrain"}
    # variants branch from the main track's end: same first step number, different data
    v = losses(out)
    assert v["decay-all"][0][0] == v["main"][-1][0] + 1 == v["decay-cont"][0][0]
    assert v["decay-all"] != v["decay-cont"]


def test_golden_losses_of_the_first_30_steps(full_run):
    """Regenerate after an intended change of loop, data order or model:
    MMBERT_REGEN_GOLDEN=1 .venv/bin/pytest tests/train/test_loop.py -k golden"""
    out, _ = full_run
    got = [l for _, l in losses(out)["main"][:30]]
    if os.environ.get("MMBERT_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"what": "per-step training loss, tests/train/conftest.py tiny_recipe/"
                                              "tiny_config/synthetic shards, seed 0, micro_batch_tokens 128, "
                                              "CPU fp32, 1 thread", "losses": got}, indent=1))
    want = json.loads(GOLDEN.read_text())["losses"]
    assert len(want) == 30
    # bitwise on one machine; other CPUs' kernels round differently (~1e-7 per op) and 30 steps of
    # training carry it: 2e-4 of a loss ≈ 6, still ≥ 50× below the ≥ 1e-2 that another data order,
    # mask or loss moves it by (abs 1e-5 only matters for a loss near 0, never reached here)
    assert got == pytest.approx(want, rel=2e-4, abs=1e-5)


def test_kill_and_resume_is_bitwise_exact_across_phase_boundaries(full_run, shards, tmp_path):
    ref_out, _ = full_run
    out = tmp_path / "run"
    # step 21: last checkpoint is step 20 inside "pretrain" → the resume crosses pretrain→mid (step 22)
    # step 25: last checkpoint is the pretrain-end checkpoint (22) → resume exactly at a phase start
    # step 34: inside the decay-all variant → resume from the branch (main-end) checkpoint
    for i, stop in enumerate((21, 25, 34)):
        r = train(tiny_recipe(), tiny_config(), shards, out, resume=i > 0, stop_at_step=stop, **KW)
        assert any(t.get("stopped") for t in r["tracks"].values())
    train(tiny_recipe(), tiny_config(), shards, out, resume=True, **KW)
    assert losses(out) == losses(ref_out)  # every step of every track, bit for bit
    # resuming a finished run does nothing more
    train(tiny_recipe(), tiny_config(), shards, out, resume=True, **KW)
    assert losses(out) == losses(ref_out)


def test_phase_by_phase_equals_all_at_once(full_run, shards, tmp_path):
    """`--phase pretrain`, then `--phase mid --resume`, then `--resume` (the variants) is the same run."""
    ref_out, _ = full_run
    out = tmp_path / "run"
    train(tiny_recipe(), tiny_config(), shards, out, phases=["pretrain"], **KW)
    assert set(losses(out)) == {"main"} and not (out / "export" / "mid").exists()
    train(tiny_recipe(), tiny_config(), shards, out, phases=["mid"], resume=True, **KW)
    assert (out / "export" / "mid").exists() and not (out / "export" / "decay-all").exists()
    train(tiny_recipe(), tiny_config(), shards, out, phases=["decay-all"], resume=True, **KW)
    assert set(losses(out)) == {"main", "decay-all"}
    train(tiny_recipe(), tiny_config(), shards, out, resume=True, **KW)
    assert losses(out) == losses(ref_out)


def test_run_dir_guard_never_overwrites(full_run, shards, tmp_path):
    out, _ = full_run
    before = (out / "run.json").read_text()
    with pytest.raises(RunDirError, match="another run.*seed"):
        train(tiny_recipe(), tiny_config(), shards, out, seed=1, **KW)
    with pytest.raises(RunDirError, match="already holds this run; pass --resume"):
        train(tiny_recipe(), tiny_config(), shards, out, **KW)
    # resuming with another model shape: one clear error
    with pytest.raises(RunDirError, match="another run.*model"):
        train(tiny_recipe(), tiny_config(hidden_size=64), shards, out, resume=True, **KW)
    assert (out / "run.json").read_text() == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        train(tiny_recipe(), tiny_config(), shards, foreign, **KW)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_bad_input_fails_before_writing(shards, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RecipeError, match="max_position_embeddings 48"):
        train(tiny_recipe(), tiny_config(max_position_embeddings=48), shards, out, **KW)
    with pytest.raises(ValueError, match="xxx_Latn"):
        r = tiny_recipe()
        bad = dataclasses.replace(r.phases[1], languages=("eng_Latn", "xxx_Latn"))
        train(r.replace(phases=(r.phases[0], bad)), tiny_config(), shards, out, **KW)
    with pytest.raises(RecipeError, match="language_weights name.*zul_Latn"):
        r = tiny_recipe()
        bad = dataclasses.replace(r.variants["decay-all"][0], language_weights={"zul_Latn": 2.0})
        train(r.replace(variants={"decay-all": (bad,)}), tiny_config(), shards, out, **KW)
    with pytest.raises(RecipeError, match="vocabulary"):
        train(tiny_recipe(), tiny_config(vocab_size=256), shards, out, **KW)
    with pytest.raises(FileNotFoundError, match="index.json"):
        train(tiny_recipe(), tiny_config(), tmp_path / "nothing", out, **KW)
    assert not out.exists()


def test_non_finite_loss_stops_with_last_good_checkpoint(shards, tmp_path, monkeypatch):
    poison_loss_after(monkeypatch, 40)
    with pytest.raises(TrainingDiverged, match=r"not finite.*Last good checkpoint: .*step_000000\d\d"):
        train(tiny_recipe(), tiny_config(), shards, tmp_path / "run", eval=False, **KW)
