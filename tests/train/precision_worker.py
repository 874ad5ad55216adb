"""Worker for test_precision.py, launched as
`torchrun --nproc_per_node 2 tests/train/precision_worker.py OUT.json ddp|fsdp`:
the tiny model wrapped by mmbert's parallelize() (DDP, or FSDP2 with bf16 layer parameters), a few
train_step()s under bf16 autocast on fixed packed batches, recording the dtypes of every encoder
layer's inputs (residual stream, RoPE cos/sin) and the losses. Rank 0 writes OUT.json."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from tinyrun import tiny_config  # noqa: E402

from mmbert.model import build_model  # noqa: E402
from mmbert.train.optim import build_optimizer  # noqa: E402
from mmbert.train.parallel import cleanup, init_distributed, parallelize  # noqa: E402
from mmbert.step import mlm_loss_fn, train_step  # noqa: E402


def batch(step: int, rank: int) -> dict:
    g = torch.Generator().manual_seed(1000 * step + rank)
    lengths = [30, 17, 45, 12]
    n = sum(lengths)
    ids = torch.randint(5, 512, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    pos = torch.cat([torch.arange(x) for x in lengths])
    return {"input_ids": ids, "labels": labels, "cu_seqlens": cu, "max_seqlen": max(lengths), "position_ids": pos}


if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    d = init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model(tiny_config(), head="mlm")
    seen = []

    def record(module, args):
        x, (cos, sin) = args[0], args[1]
        seen.append([str(x.dtype), str(cos.dtype), str(sin.dtype)])

    for layer in model.model.layers:
        layer.register_forward_pre_hook(record)
    model = parallelize(model, d, mode=mode, param_dtype=torch.bfloat16)
    opt = build_optimizer(model, lr=3e-3, weight_decay=0.0)
    losses = [train_step(model, opt, [batch(s, d.rank)], mlm_loss_fn, autocast_dtype=torch.bfloat16).loss
              for s in range(4)]
    if d.is_main:
        Path(out).write_text(json.dumps({"dtypes": seen, "losses": losses}))
    cleanup(d)
