"""Worker for test_dist.py, launched as `torchrun --nproc_per_node 2 tests/train/ddp_worker.py SHARDS OUT MICRO [ddp|fsdp] [STOP]`:
the same `train()` entry point as one process, here under DDP (gloo, CPU)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tinyrun import tiny_config, tiny_recipe  # noqa: E402

from mmbert.train.loop import train  # noqa: E402

if __name__ == "__main__":
    shards, out, micro = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "auto"
    stop = int(sys.argv[5]) if len(sys.argv) > 5 else None  # a simulated kill after this step
    train(tiny_recipe(scale=0.5, batch_warmup=False), tiny_config(), shards, out, phases=["pretrain"], micro_batch_tokens=micro,
          progress=False, eval=False, plots=False, parallel=mode, stop_at_step=stop)
