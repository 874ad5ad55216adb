"""Crash-safe writing (mmbert.utils): file modes and fsync, whole-directory publishing under a kill,
the run lock, stale temps, and disk-full / permission errors as one `error:` line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert import utils as U
from mmbert.export.hf import save_pretrained


def killed_at(point: str, fn) -> None:
    """Run fn() in a forked child that SIGKILLs itself at crash point `point`."""
    pid = os.fork()
    if pid == 0:
        os.environ["MMBERT_TEST_KILL_AT"] = point
        try:
            fn()
        finally:
            os._exit(3)  # reached only when the point was not
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def write_model_like(d: Path, version: str) -> None:
    (d / "config.json").write_text(json.dumps({"rope_theta": version}))
    (d / "model.safetensors").write_text(f"weights {version}")


def test_atomic_write_gives_the_usual_mode_and_fsyncs(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    old = os.umask(0o022)
    try:
        U.atomic_write(tmp_path / "a.json", "{}")
        U.atomic_write(tmp_path / "b.bin", lambda t: Path(t).write_bytes(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644
    # the data before the rename that publishes it, the directory after
    assert any(".a.json.tmp-" in s for s in synced) and str(tmp_path) in synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_publish_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with U.publish_dir(out) as d:
        write_model_like(d, "10k")
    # an error half-way: the old directory is untouched, no temp stays, no new parent stays
    with pytest.raises(RuntimeError):
        with U.publish_dir(out) as d:
            (d / "config.json").write_text("new")
            raise RuntimeError("disk gone")
    with pytest.raises(RuntimeError):
        with U.publish_dir(tmp_path / "new" / "deeper" / "m") as d:
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert json.loads((out / "config.json").read_text()) == {"rope_theta": "10k"}

    # a kill right before the publishing rename (issue item 4): the old directory is whole
    def replace():
        with U.publish_dir(out) as d:
            write_model_like(d, "160k")

    killed_at("publish_dir:model", replace)
    assert json.loads((out / "config.json").read_text()) == {"rope_theta": "10k"}
    assert (out / "model.safetensors").read_text() == "weights 10k"
    assert [p.name for p in tmp_path.glob(".model.tmp-*")]  # the dead writer's temp …
    replace()  # … removed by the next publish of the same name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (out / "model.safetensors").read_text() == "weights 160k"


def test_without_an_atomic_exchange_a_kill_between_the_renames_is_undone(tmp_path, monkeypatch):
    out = tmp_path / "model"
    with U.publish_dir(out) as d:
        write_model_like(d, "10k")
    monkeypatch.setattr(U, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE

    def replace():
        with U.publish_dir(out) as d:
            write_model_like(d, "160k")

    killed_at("publish_dir.second_rename", replace)
    assert not out.exists() and list(tmp_path.glob(".model.old-*"))
    assert U.sweep_stale(tmp_path)  # the old version is put back: it is the last complete one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (out / "model.safetensors").read_text() == "weights 10k"
    replace()
    assert (out / "model.safetensors").read_text() == "weights 160k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_publish_dir_carries_other_files_but_never_an_old_model_file(tmp_path, monkeypatch):
    out = tmp_path / "m"
    with U.publish_dir(out) as d:
        write_model_like(d, "a")
        (d / "model.safetensors.index.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    from mmbert.export.hf import _not_model_file

    with U.publish_dir(out, carry=_not_model_file) as d:
        write_model_like(d, "b")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(NotADirectoryError, match="is a file"):
        with U.publish_dir(out / "notes.txt"):
            pass
    monkeypatch.chdir(out)  # replacing the working directory would strand this process in a deleted one
    with pytest.raises(ValueError, match="is the current directory"):
        with U.publish_dir("."):
            pass


def test_sweep_removes_only_dead_writers_temps(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = tmp_path / U.temp_name("x")
    theirs = tmp_path / f".y.tmp-{dead.pid}@{U.HOST}"
    other_host = tmp_path / f".z.tmp-{dead.pid}@elsewhere"
    for p in (mine, theirs, other_host):
        p.mkdir()
    assert U.sweep_stale(tmp_path) == [theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_host.name])


def test_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    target = tmp_path / "run"
    code = (f"import time; from mmbert.utils import RunLock\n"
            f"with RunLock({str(target)!r}):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(U.RunLocked, match=rf"pid {holder.pid} on host {U.HOST}, since .*wait for it"):
            with U.RunLock(target):
                pass
    finally:
        holder.kill()
        holder.wait()
    with U.RunLock(target):  # the kernel released the dead holder's lock
        with U.RunLock(target):  # re-entrant in one process
            assert (tmp_path / ".run.lock").is_file()
        assert (tmp_path / ".run.lock").is_file()
    assert list(tmp_path.iterdir()) == []  # removed on release


@pytest.mark.parametrize("exc, want", [
    (OSError(errno.ENOSPC, "No space left on device", "/x/model.safetensors"),
     "cannot write /x/model.safetensors: no space left on the device; free some space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "cannot write out/m: the disk quota is exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/a"), "cannot write /ro/a: the file system is read-only"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "cannot access /root/x: permission denied"),
    # what safetensors and torch turn an ENOSPC into
    (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'),
     "cannot write out/m: no space left on the device"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1322048 vs 1321936"),
     "cannot write out/m: a write stopped part-way (unexpected pos 1322048 vs 1321936): most likely no space left"),
    (ValueError("vocab_size must be positive"), None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x"), None),
])
def test_storage_problems_are_recognised(exc, want):
    got = U.storage_problem(exc, "out/m")
    assert got == want if want is None else got.startswith(want), got


def test_cli_disk_full_is_one_line_and_leaves_no_empty_output(tmp_path, monkeypatch, capsys):
    from mmbert.cli import main
    from mmbert.model import build_model
    from mmbert.model.config import EncoderConfig

    cfg = EncoderConfig.from_preset("tiny", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=64, local_attention=16)
    save_pretrained(build_model(cfg), tmp_path / "a")

    def full(*a, **k):
        raise Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    import mmbert.merge

    monkeypatch.setattr(mmbert.merge, "save_file", full)  # the name merge writes through
    out = tmp_path / "new" / "merged"
    rc = main(["merge", "--models", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot write {out}: no space left on the device; free some space" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no empty output, no temp, no lock


def test_embed_out_directory_is_refused_before_computing(tmp_path):
    from mmbert.inference import embed_file

    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "vecs.npy").mkdir()
    with pytest.raises(ValueError, match=r"vecs.npy is a directory; give a file name"):
        embed_file("no-such-model-is-loaded", tmp_path / "in.txt", tmp_path / "vecs.npy")
