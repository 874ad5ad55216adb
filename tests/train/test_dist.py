"""2-process DDP and FSDP2 (gloo, CPU, launched by torchrun) give the same losses and the same
phase-end model as 1 process with the same global batch and the same data stream (2 packing lanes,
which a 2-rank run uses by default: each rank packs only its own lane): the loader hands each rank a
disjoint half of the same global rows, and train_step normalises by the global masked-token count. Only the float
summation order differs (the gradient all-reduce / reduce-scatter adds two partial sums), so losses
agree to ~1e-7 relative; we allow 1e-4 over the 10+ steps, and 1e-3 on the exported weights.
(The recipe here has no batch-size warm-up: global rows are rounded to a multiple of the world size,
so a warm-up passing through odd row counts would give the 2-rank run different batch sizes.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmbert.train.loop import train

from tinyrun import tiny_config, tiny_recipe

pytestmark = pytest.mark.dist


def _losses(run):
    return [json.loads(ln)["loss"] for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()
            if '"train"' in ln]


@pytest.fixture(scope="module")
def one_process(shards, tmp_path_factory):
    one = tmp_path_factory.mktemp("one") / "run"
    # one process: micro-batch of 8 rows (256 tokens at seq 32) = the 2 x 4 rows of the 2-rank runs
    train(tiny_recipe(scale=0.5, batch_warmup=False), tiny_config(), shards, one, phases=["pretrain"], micro_batch_tokens=256,
          progress=False, eval=False, plots=False, lanes=2)
    return one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process(one_process, shards, tmp_path, mode):
    two = tmp_path / "two"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(Path(__file__).parent / "ddp_worker.py"), str(shards), str(two), "128", mode]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _losses(one_process), _losses(two)
    assert len(a) == len(b) >= 10
    # two ranks sum fp32 gradients in another order (≈ eps per step), ~12 steps of training carry it;
    # a wrong rank split, normalisation or data share moves a loss by ≥ 1e-2
    assert b == pytest.approx(a, rel=1e-4)
    assert json.loads((two / "run.json").read_text())["launches"][-1]["world_size"] == 2
    # rank 0 gathered the full model for the phase-end export (sharded under FSDP2)
    w1 = load_file(str(one_process / "export" / "pretrain" / "model.safetensors"))
    w2 = load_file(str(two / "export" / "pretrain" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        # AdamW divides by √v per element, so a rounding-level gradient difference moves a weight
        # by ≪ lr (3e-3) per step: rtol 1e-3 on O(0.02-1) weights, atol 1e-5 for those near zero
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-5)


def test_two_rank_checkpoint_resumes_exactly_in_one_process(one_process, shards, tmp_path):
    """Killed after step 8 of 10, a 2-rank DDP run's last checkpoint (step 6) holds the loader state
    gathered from both ranks' lanes; one process resumes it (the lanes come from the checkpoint) and
    continues exactly as the uninterrupted run: the losses of every step match the 1-process run."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(Path(__file__).parent / "ddp_worker.py"), str(shards), str(run), "128", "ddp", "8"]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ck = sorted((run / "checkpoints" / "main").glob("step_*"))
    assert [c.name for c in ck] == ["step_00000006"], ck
    train(tiny_recipe(scale=0.5, batch_warmup=False), tiny_config(), shards, run, phases=["pretrain"],
          micro_batch_tokens=256, progress=False, eval=False, plots=False, resume=True)
    a, b = _losses(one_process), _losses(run)
    assert len(a) == len(b) >= 10
    # the same float tolerance as above: only summation order differs (2 ranks' partial sums)
    assert b == pytest.approx(a, rel=1e-4)
    assert [ln["world_size"] for ln in json.loads((run / "run.json").read_text())["launches"]] == [2, 1]
