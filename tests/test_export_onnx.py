"""ONNX export round-trips in ONNX Runtime: fp32 equals our encoder, int8 stays close; the CLI."""

import json

import numpy as np
import pytest
import torch

from mmbert import EncoderConfig
from mmbert.export.hf import save_pretrained
from mmbert.export.onnx import export_onnx, run_session, session
from mmbert.inference import embed
from mmbert.model import build_model

ort = pytest.importorskip("onnxruntime")  # in the dev and onnx extras

# window 16 → |i−j| ≤ 8: documents of 40 and 70 tokens exercise the band on the local layers
CFG = EncoderConfig.from_preset("tiny", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=2, local_attention=16, max_position_embeddings=128)
LENGTHS = [40, 1, 7, 70, 16]


def _fp32_tolerance(ref: torch.Tensor, max_len: int) -> float:
    """ORT and torch run the same fp32 maths in a different order (fused kernels, other blocking).
    A dot product of length K in fp32 is off by at most K·eps relative (Higham's γ_K); each of the
    2L+1 sublayers (attention, MLP, final norm) adds such errors to the residual stream, and the
    largest reduction is over max(hidden, intermediate, length) terms. Bound × the output's size."""
    eps = torch.finfo(torch.float32).eps
    K = max(CFG.hidden_size, CFG.intermediate_size, max_len)
    return (2 * CFG.num_hidden_layers + 1) * K * eps * float(ref.abs().max())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(CFG, head="mlm").eval()
    with torch.no_grad():  # weights of a trained model's size: σ 0.02 leaves every layer near the identity
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    return m


def _docs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, CFG.vocab_size, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.mark.parametrize("pooling", ["mean", "first", "none"])
def test_onnx_fp32_matches_ours_and_int8_is_close(model, tmp_path, pooling):
    info = export_onnx(model, tmp_path, pooling=pooling, quantize="int8" if pooling == "mean" else None)
    assert (tmp_path / "model.onnx").is_file()
    assert json.loads((tmp_path / "onnx_export.json").read_text())["pooling"] == pooling
    docs = _docs(1)  # other documents than the export's own check, in one padded batch
    ref = embed(model, docs, pooling=pooling, dtype="fp32")
    got = run_session(session(tmp_path / "model.onnx", threads=1), docs, CFG.pad_token_id)
    if pooling == "none":
        assert got.shape == (len(docs), max(LENGTHS), CFG.hidden_size)
        got = torch.cat([torch.from_numpy(np.ascontiguousarray(got[i, :len(d)])) for i, d in enumerate(docs)])
        ref = torch.cat(ref)
    else:
        got = torch.from_numpy(got)
    tol = _fp32_tolerance(ref, max(LENGTHS))  # derived: rounding only (_fp32_tolerance's docstring)
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)
    assert info["verification"]["fp32_max_abs_diff"] <= tol

    if pooling == "mean":  # int8: the cosine is reported; int8 weights err ~0.5% per matmul, so
        q = torch.from_numpy(run_session(session(tmp_path / "model.int8.onnx", threads=1), docs, CFG.pad_token_id))
        cos = torch.nn.functional.cosine_similarity(q.double(), ref.double())
        print(f"int8 cosine to fp32: min {cos.min():.6f}")  # (a few matmuls deep: far above 0.99)
        assert cos.min() > 0.99
        assert 0 < info["verification"]["int8_max_abs_diff"]  # it was quantised, not copied


def test_cli_export_onnx(model, tmp_path, capsys):
    from mmbert.cli import main

    save_pretrained(model, tmp_path / "m")
    assert main(["export", "--format", "onnx", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                 "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "model.int8.onnx" in out and "cosine" in out
    assert (tmp_path / "o" / "model.int8.onnx").is_file()
    with pytest.raises(ValueError, match="pooling"):
        export_onnx(model, tmp_path / "q", pooling="max")
    with pytest.raises(FileNotFoundError, match="mmbert export --format onnx"):
        session(tmp_path / "nothing.onnx")
