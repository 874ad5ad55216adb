"""2-process DDP (gloo, CPU, launched by torchrun) gives the same losses as 1 process with the same
global batch: the loader hands each rank a disjoint half of the same global rows, and train_step
normalises by the global masked-token count. Only the float summation order differs (the gradient
all-reduce adds two partial sums), so losses agree to ~1e-6 relative; we allow 1e-4 over 22 steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert.train.loop import train

from conftest import tiny_config, tiny_recipe

pytestmark = pytest.mark.dist


def _losses(run):
    return [json.loads(ln)["loss"] for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()
            if '"train"' in ln]


def test_ddp_two_processes_match_one_process(shards, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # one process: micro-batch of 8 rows (256 tokens at seq 32) = the 2 x 4 rows of the DDP run
    train(tiny_recipe(), tiny_config(), shards, one, phases=["pretrain"], micro_batch_tokens=256,
          progress=False, eval=False, plots=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(Path(__file__).parent / "ddp_worker.py"), str(shards), str(two), "128"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) > 10
    assert b == pytest.approx(a, rel=1e-4)
    # and the runs did differ in how they were computed (world size is recorded)
    assert json.loads((two / "run.json").read_text())["identity"]["world_size"] == 2
