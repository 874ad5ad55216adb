"""The optimizer step implementation: torch-optimi's Triton kernels on CUDA with Triton, its foreach
path on CUDA without, the per-tensor loop on CPU and for FSDP2's DTensor shards (mmbert.train.optim).
CUDA itself is not here: the foreach path runs on CPU as its stand-in (the same ops, CPU kernels), and
the choice is checked on parameters of each kind."""

import os
import socket

import pytest
import torch

from mmbert.train.optim import build_optimizer, step_flags, step_implementation


def _steps(model, **flags):
    opt = build_optimizer(model, lr=1e-2, weight_decay=1e-4)
    for g in opt.param_groups:
        g.update(flags)
    torch.manual_seed(1)
    for _ in range(3):
        model(torch.randn(5, 8)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))


def test_choice_per_device_and_parameter_kind():
    assert step_implementation(list(_model().parameters())) == {"foreach": False, "triton": False}
    opt = build_optimizer(_model(), lr=1e-3, weight_decay=0.0)
    assert (opt.defaults["foreach"], opt.defaults["triton"]) == (False, False)   # CPU: the golden path
    # the table for CUDA (no CUDA tensors here): Triton when importable, else foreach; DTensor → loop
    assert step_flags(plain=True, on_cuda=True, has_triton=True) == {"foreach": False, "triton": True}
    assert step_flags(plain=True, on_cuda=True, has_triton=False) == {"foreach": True, "triton": False}
    assert step_flags(plain=False, on_cuda=True, has_triton=True) == {"foreach": False, "triton": False}
    assert step_flags(plain=True, on_cuda=False, has_triton=True) == {"foreach": False, "triton": False}


def test_foreach_fallback_equals_the_loop():
    """The CUDA-without-Triton path (foreach) makes the same update as the per-tensor loop: the same
    float ops per element, grouped into list kernels (bitwise on CPU; on CUDA the grouped kernels may
    round differently, which exact resume does not depend on: the choice is fixed per machine)."""
    loop = _steps(_model(), foreach=False, triton=False)
    grouped = _steps(_model(), foreach=True, triton=False)
    for a, b in zip(loop, grouped):
        assert torch.equal(a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = _model()
        fully_shard(model)
        assert type(next(model.parameters())).__name__ == "DTensor"
        opt = build_optimizer(model, lr=1e-2, weight_decay=1e-4)
        assert (opt.defaults["foreach"], opt.defaults["triton"]) == (False, False)
        got = _steps(model)
        torch.save([p.full_tensor() for p in got], out)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_fsdp2_shards_take_the_loop_and_match_the_plain_model(tmp_path):
    """Under FSDP2 the parameters are DTensors: build_optimizer picks the per-tensor loop (optimi's
    foreach path fails on them) and the update equals the unwrapped model's (one rank: shard = whole
    tensor, so the per-tensor update clipping sees the same RMS)."""
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(_free_port(), str(tmp_path / "w.pt")), nprocs=1, join=True)
    sharded = torch.load(tmp_path / "w.pt", weights_only=True)
    plain = _steps(_model())
    # not bitwise: the spawned process reduces in another order (DTensor ops, its own thread count),
    # a few fp32 ulps per step (measured ≤ 1.4 ulp after 3 steps); allow 16 ulps relative, and
    # 16 ulps of the tensor's scale for elements near zero
    eps = torch.finfo(torch.float32).eps
    for a, b in zip(plain, sharded):
        torch.testing.assert_close(b, a, rtol=16 * eps, atol=16 * eps * a.abs().max().item())
