"""The `torch-varlen` backend (torch's FA2 varlen kernel) on CPU, through a stand-in for the CUDA
kernel (fa2_standin.py: torch's own custom op, fake kernel and autograd formula, with only the
innermost kernel replaced by a float64 reference of FA2's semantics). What is tested here is mmbert's
side: the packed layout, the window passed on local/global layers, two distinct cu_seqlens tensors,
gradients, and that torch.compile traces the whole encoder in one graph. The real kernel is tested
against the eager oracle in tests/gpu/test_cuda.py (`-m gpu`).

Tolerances: fp32 model vs the fp32 eager oracle, the derived bound of tests/parity_tol.py (the
stand-in computes attention in float64 and rounds once, so the paths differ by fp32 rounding of
different summation orders only)."""

import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import fa2_standin  # noqa: E402
from parity_tol import assert_fp32_close  # noqa: E402

from mmbert.model import EncoderConfig, build_model  # noqa: E402
from mmbert.model import attention as attn_mod  # noqa: E402
from mmbert.model.attention import resolve_backend  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def standin():
    fa2_standin.install()


# tiny(): hidden 128, intermediate 256, 4 layers → widest reduction 256, depth 6 (tests/parity_tol.py)
WIDEST, DEPTH = 256, 6


def tiny(**kw):
    cfg = EncoderConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=4, local_attention=16, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def padded(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, 500, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def test_matches_eager_with_grad_and_passes_window_and_distinct_cu():
    model = tiny().train()
    ids, mask = padded([50, 33, 1, 17])  # documents longer and shorter than the window (8 each side)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)
    labels = labels.masked_fill(mask == 0, -100)
    got = {}
    for b in ("eager", "torch-varlen"):
        model.zero_grad()
        fa2_standin.CALLS.clear()
        out = model(ids, mask, labels=labels, backend=b)
        out.loss.backward()
        got[b] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert_fp32_close(got["torch-varlen"][0], got["eager"][0], widest=WIDEST, depth=DEPTH)
    for name, g in got["eager"][1].items():  # backward retraces the forward: twice the depth
        assert_fp32_close(got["torch-varlen"][1][name], g, widest=WIDEST, depth=2 * DEPTH, msg=name)
    # one kernel call per layer: global layers (0, 3) unbounded, local layers (1, 2) |i - j| <= 8
    calls = fa2_standin.CALLS
    assert [c["window"] for c in calls] == [(-1, -1), (8, 8), (8, 8), (-1, -1)]
    assert all(c["distinct_cu"] for c in calls)  # q and k get different tensors (Dynamo needs that)
    assert all(c["max_q"] == 50 and c["n"] == 101 for c in calls)


def test_window_boundary_and_no_leakage_across_documents():
    """A one-local-layer model: changing token 20 of document 0 changes exactly tokens 16..24 of it
    and nothing of the document packed after it."""
    cfg = EncoderConfig.from_preset("tiny", vocab_size=500, num_hidden_layers=2, global_attn_every_n_layers=5,
                                    local_attention=8)
    torch.manual_seed(0)
    model = build_model(cfg, head="none").eval()
    model.layers = model.layers[1:]  # only the local layer
    x = torch.randint(5, 500, (70,))
    y = x.clone()
    y[20] = (y[20] + 1) % 495 + 5
    cu = torch.tensor([0, 40, 70], dtype=torch.int32)
    with torch.no_grad():
        d = (model(x, cu_seqlens=cu, backend="torch-varlen").last_hidden_state
             - model(y, cu_seqlens=cu, backend="torch-varlen").last_hidden_state)
    # a token outside the window is bitwise unchanged (masked keys enter as exact zeros); one inside
    # moves by O(0.1), so 1e-6 tells the two apart with margin on both sides
    changed = (d.abs().amax(-1) > 1e-6).nonzero().squeeze(1).tolist()
    assert changed == list(range(16, 25))


def test_compiled_layers_have_no_graph_break():
    """Each encoder layer compiled as train/parallel.py does (in place, dynamic shapes), here with
    fullgraph=True so any graph break is an error: the custom op has a fake kernel and q/k get
    distinct cu_seqlens tensors. aot_eager runs Dynamo + AOTAutograd (forward and backward graphs)
    without generating code, which keeps this fast on CPU."""
    model = tiny().train()
    ids = torch.randint(5, 500, (90,))
    cu = torch.tensor([0, 40, 90], dtype=torch.int32)
    ref = model.model(ids, cu_seqlens=cu, max_seqlen=50, backend="torch-varlen").last_hidden_state
    for layer in model.model.layers:
        layer.compile(fullgraph=True, dynamic=True, backend="aot_eager")
    got = model.model(ids, cu_seqlens=cu, max_seqlen=50, backend="torch-varlen").last_hidden_state
    got.square().mean().backward()
    assert_fp32_close(got, ref, widest=WIDEST, depth=DEPTH)  # AOTAutograd may decompose/reorder ops: rounding only
    assert model.model.layers[0].attn.Wqkv.weight.grad is not None


def test_auto_picks_the_usable_kernel(monkeypatch):
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "varlen"
    assert resolve_backend("auto", torch.device("cpu"), bf16) == "varlen"
    # a CUDA machine without flash-attn: torch's kernel
    monkeypatch.setattr(attn_mod, "flash_attn_available", lambda: False)
    monkeypatch.setattr(attn_mod, "torch_varlen_available", lambda device=None: True)
    assert resolve_backend("auto", cuda, bf16) == "torch-varlen"
    assert resolve_backend("auto", cuda, torch.float32) == "varlen"  # FA2 is half precision only
    assert resolve_backend("auto", cuda, bf16, dropout_p=0.1) == "varlen"  # torch's kernel has no dropout
    monkeypatch.setattr(attn_mod, "flash_attn_available", lambda: True)
    assert resolve_backend("auto", cuda, bf16) == "flash"


def test_flash_attn_namespace_without_the_function_is_not_flash(monkeypatch):
    """The flash-attn-4 wheel installs a `flash_attn` namespace without flash_attn_varlen_func:
    `import flash_attn` works, but mmbert must not pick the flash backend."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attn_mod.flash_attn_available() is False
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    assert attn_mod.flash_attn_available() is True


def test_dropout_is_refused_with_a_clear_error():
    model = tiny(attention_dropout=0.1).train()
    ids, mask = padded([10, 4])
    with pytest.raises(ValueError, match="torch-varlen has no attention dropout"):
        model(ids, mask, backend="torch-varlen")
