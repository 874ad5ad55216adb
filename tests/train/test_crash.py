"""Crash safety of a run directory: the process is SIGKILLed right before a publishing rename
(utils.crash_point, $MMBERT_TEST_KILL_AT), then resumed; the end state must equal an uninterrupted
run's byte for byte — every checkpoint, every export, every metrics record — with nothing hidden
left behind. Also: resume past damaged checkpoints and a torn metrics line, the run lock, and
divergence continued with --lr-scale.

The kills run in a forked child (no interpreter/torch start-up per trial); the resumes in this
process, exactly as `mmbert pretrain --resume` would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbert.train import checkpoint as C
from mmbert.train.loop import TrainingDiverged, train
from mmbert.utils import RunLocked

from tinyrun import poison_loss_after, tiny_config, tiny_recipe

KW = dict(micro_batch_tokens=128, progress=False, plots=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every run here on one torch thread. A forked child inherits the parent's OpenMP thread count
    but not its pool threads: with a count above 1 its first parallel op waits forever for workers
    that do not exist (seen as a hang in repeat_interleave when an earlier test left 2 threads).
    One thread runs parallel ops inline; the reference, the killed children and the resumes all
    use it, so bit-identity compares like with like."""
    old, env = torch.get_num_threads(), os.environ.get("MMBERT_THREADS")
    torch.set_num_threads(1)
    os.environ["MMBERT_THREADS"] = "1"
    yield
    torch.set_num_threads(old)
    if env is None:
        del os.environ["MMBERT_THREADS"]
    else:
        os.environ["MMBERT_THREADS"] = env
TIMING = ("tokens_per_s", "mfu")  # wall-clock fields of a metrics record


def run_killed_at(point: str, out: Path, shards: Path, resume: bool) -> None:
    """Run the recipe in a forked child that SIGKILLs itself at crash point `point`; the child must
    die by that signal (the point was reached)."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.environ["MMBERT_TEST_KILL_AT"] = point
            train(tiny_recipe(), tiny_config(), shards, out, resume=resume, **KW)
        except BaseException:  # noqa: BLE001 - report through the exit code, never return into pytest
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (point, status)


def end_state(run: Path) -> dict[str, object]:
    """Every file of the run directory by relative path (bytes), metrics as records without the
    wall-clock fields; run.json is left out (it lists each launch)."""
    state: dict[str, object] = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and rel not in ("run.json", "metrics.jsonl"):
            state[rel] = p.read_bytes()
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    state["metrics"] = [{k: v for k, v in r.items() if k not in TIMING} for r in recs]
    return state


def hidden(run: Path) -> list[str]:
    """Leftovers: hidden entries inside the run dir or beside it (temps, the lock file)."""
    inside = [p.relative_to(run).as_posix() for p in run.rglob(".*")]
    beside = [p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.")]
    return inside + beside


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_recipe(), tiny_config(), shards, out, **KW)
    return out, end_state(out)


def test_kills_before_each_kind_of_rename_resume_bit_identical(reference, shards, tmp_path):
    """Issue items 1, 2, 4, 5, 13 in one chain of kills (each resumes the previous one's leftovers)."""
    ref_out, ref = reference
    out = tmp_path / "run"
    # 5: killed during the very first run.json write — the directory is not wedged: the same
    # command (no --resume) starts it
    run_killed_at("atomic_write:run.json", out, shards, resume=False)
    assert not (out / "run.json").exists() and len(list(out.iterdir())) == 1  # only the hidden temp
    # 2: killed before the first checkpoint: 8 steps logged, nothing to resume from
    run_killed_at("publish_dir:step_00000008", out, shards, resume=False)
    assert not C.list_checkpoints(out / "checkpoints" / "main")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 8
    # 1: killed between the phase-end checkpoint and the phase-end export (the resume before it
    # starts over and must not log steps 1–8 twice)
    run_killed_at("publish_dir:pretrain", out, shards, resume=True)
    assert C.read_state(out / "checkpoints" / "main" / "step_00000022")["phase"] == 1
    assert not (out / "export" / "pretrain").exists() and list((out / "export").glob(".pretrain.tmp-*"))
    # 13: killed right before pruning renames a checkpoint out of the listing
    run_killed_at("prune", out, shards, resume=True)
    # 4 (in a run): killed before the decay-all export is published
    run_killed_at("publish_dir:decay-all", out, shards, resume=True)
    train(tiny_recipe(), tiny_config(), shards, out, resume=True, **KW)
    got = end_state(out)
    assert sorted(got) == sorted(ref)  # every checkpoint and export, nothing else
    for k in ref:
        assert got[k] == ref[k], k  # bit for bit, metrics record for record
    assert hidden(out) == []


@pytest.mark.slow
def test_a_kill_before_every_rename_resumes_bit_identical(reference, shards, tmp_path):
    """Every crash point an uninterrupted run passes (renames that publish, prune and clean up):
    each trial kills there, resumes, and must end exactly at the reference."""
    ref_out, ref = reference
    trace = tmp_path / "trace"
    os.environ["MMBERT_TEST_CRASH_TRACE"] = str(trace)
    try:
        train(tiny_recipe(), tiny_config(), shards, tmp_path / "traced", **KW)
    finally:
        del os.environ["MMBERT_TEST_CRASH_TRACE"]
    points = trace.read_text().split()
    assert len(points) > 30
    for k in range(1, len(points) + 1):
        out = tmp_path / f"trial{k}"
        run_killed_at(f"*#{k}", out, shards, resume=False)
        train(tiny_recipe(), tiny_config(), shards, out, resume=(out / "run.json").exists(), **KW)
        got = end_state(out)
        assert sorted(got) == sorted(ref), points[k - 1]
        assert all(got[x] == ref[x] for x in ref), points[k - 1]
        assert hidden(out) == [], points[k - 1]


def test_resume_falls_back_past_damaged_checkpoints_and_repairs_a_torn_metrics_line(reference, shards, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "run"
    train(tiny_recipe(), tiny_config(), shards, out, stop_at_step=25, **KW)
    main = out / "checkpoints" / "main"
    assert [p.name for p in C.list_checkpoints(main)][-2:] == ["step_00000020", "step_00000022"]
    for f, keep in ((main / "step_00000022" / "optimizer.pt", 100), (main / "step_00000020" / "model.safetensors", 300)):
        f.write_bytes(f.read_bytes()[:keep])  # what a full disk or a lost write leaves
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "track": "ma')  # a torn last line
    train(tiny_recipe(), tiny_config(), shards, out, resume=True, **KW)
    assert sorted(p.name for p in main.glob("damaged-*")) == ["damaged-step_00000020", "damaged-step_00000022"]
    for d in main.glob("damaged-*"):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    got = end_state(out)
    assert sorted(got) == sorted(ref) and all(got[k] == ref[k] for k in ref)


def test_non_finite_weights_are_never_saved_nor_called_last_good(tmp_path):
    import torch

    from mmbert.model import build_model
    from mmbert.train.optim import build_optimizer

    m = build_model(tiny_config())
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.0)
    good = C.save_checkpoint(tmp_path, 1, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    with torch.no_grad():
        m.model.embeddings.tok_embeddings.weight[7, 3] = float("inf")  # an unused row: the loss stays finite
    with pytest.raises(C.NonFiniteWeights, match="tok_embeddings"):
        C.save_checkpoint(tmp_path, 2, model=m, optimizer=opt, train_state={}, loader_state={}, run_config={})
    assert C.list_checkpoints(tmp_path) == [good]
    # a checkpoint from before the check (no "finite" in state.json) is scanned
    from safetensors.torch import save_file

    legacy = tmp_path / "step_00000003"
    legacy.mkdir()
    for f in C.FILES:
        if f != "model.safetensors":
            (legacy / f).write_bytes((good / f).read_bytes())
    (legacy / "state.json").write_text(json.dumps({"step": 3}))
    save_file(C.model_state(m), str(legacy / "model.safetensors"))
    assert C.latest_checkpoint(tmp_path) == legacy and C.last_good_checkpoint(tmp_path) == good
    with pytest.raises(C.CheckpointDamaged, match="non-finite"):
        C.load_checkpoint(legacy, model=build_model(tiny_config()))


def test_divergence_is_one_line_and_lr_scale_continues_it(reference, shards, tmp_path, monkeypatch, capsys):
    import mmbert.train.loop as L
    from mmbert.cli import main

    real = poison_loss_after(monkeypatch, 40)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        train(tiny_recipe(), tiny_config(), shards, out, eval=False, **KW)
    msg = str(e.value)
    assert "\n" not in msg and "Last good checkpoint: " in msg and "--resume --lr-scale 0.5" in msg
    good = Path(msg.split("Last good checkpoint: ")[1].split(". To continue")[0])
    assert C.has_finite_weights(good) and good == C.latest_checkpoint(out / "checkpoints" / "main")
    monkeypatch.setattr(L, "mlm_loss_fn", real)
    # the advice works: same recipe (not "another run"), LR halved from the resumed step on
    res = train(tiny_recipe(), tiny_config(), shards, out, resume=True, lr_scale=0.5, eval=False, **KW)
    assert res["tracks"]["decay-cont"]["step"] == 36
    info = json.loads((out / "run.json").read_text())
    assert info["lr_scale"] == 0.5 and info["launches"][-1]["lr_scale"] == 0.5
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    ref_lr = {(r["track"], r["step"]): r["lr"] for r in reference[1]["metrics"] if r["type"] == "train"}
    resumed = C.read_state(good)["step"]
    for r in recs:
        if r["type"] == "train":  # x * 0.5 is exact in binary floating point
            assert r["lr"] == ref_lr[r["track"], r["step"]] * (0.5 if r["track"] != "main" or r["step"] > resumed
                                                                 else 1.0)
    assert C.read_state(out / "checkpoints" / "main" / "step_00000032")["lr_scale"] == 0.5
    # the CLI: bad scale is one line
    rc = main(["pretrain", "--shards", str(shards), "--out", str(out), "--resume", "--lr-scale", "-1"])
    assert rc == 1 and "--lr-scale must be a positive number" in capsys.readouterr().err


def test_a_second_writer_is_refused_naming_the_holder(shards, tmp_path, capsys):
    from mmbert.cli import main

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmbert.utils import RunLock\n"
                               f"with RunLock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"another mmbert process \(pid {holder.pid} on host "):
            train(tiny_recipe(), tiny_config(), shards, out, **KW)
        rc = main(["pretrain", "--shards", str(shards), "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        assert rc == 1 and f"pid {holder.pid}" in err and err.count("error:") == 1
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()  # the refused runs wrote nothing
    # the holder died: the kernel dropped its lock; the next writer takes it (and removes the file)
    train(tiny_recipe(), tiny_config(), shards, out, stop_at_step=2, **KW)
    assert hidden(out) == []
