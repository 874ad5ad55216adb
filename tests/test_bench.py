"""mmbert bench's peers run the same weights: their embeddings agree with ours (no timing here)."""

import pytest
import torch

from mmbert.apps.bench import build_systems, cosines, make_batches

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


@pytest.mark.slow  # builds every peer (ONNX export + int8, a 250k-vocab XLM-R): ~15 s idle, minutes on a busy machine
def test_peers_share_our_weights_and_sorted_batches_hold_the_same_documents(monkeypatch):
    monkeypatch.setenv("MMBERT_DTYPE", "bf16")  # "auto" without calibrating: ours in bf16 + an fp32 twin
    systems = build_systems("tiny", [torch.float32], "auto", seed=0, onnx=True, threads=1)
    names = [s.name for s in systems]
    assert names[:2] == ["mmbert", "mmbert_fp32"] and {"hf_modernbert", "onnxrt", "onnxrt_int8", "xlmr"} <= set(names)
    assert systems[0].dtype == torch.bfloat16
    lengths = [40, 7, 90, 33]
    batch = make_batches(lengths, 32768, 10_000, seed=0)[0]
    cos = cosines(systems, batch)
    # fp32 peers run the same maths on the same weights (padded instead of packed): equal to
    # fp32 rounding; bf16 and int8 are reported, and must still point the same way
    assert cos["mmbert_fp32"] == pytest.approx(1.0, abs=1e-9)  # the reference with itself, in float64: 1 ± ~eps64
    # relative vector error ≤ the fp32 parity bound (~1e-4), and 1 - cos ≈ ½·(relative error)² ≈ 5e-9
    assert cos["hf_modernbert"] > 1 - 1e-6 and cos["onnxrt"] > 1 - 1e-6
    # bf16 (8-bit mantissa) / int8 weights: ~1% per vector, 1 - cos ≈ 1e-4; a broken model is near 0
    assert cos["mmbert"] > 0.99 and cos["onnxrt_int8"] > 0.99
    assert "xlmr" not in cos  # another model: no cosine
    by_len = make_batches(lengths, 32768, 100, seed=0, by_length=True)
    shuffled = make_batches(lengths, 32768, 100, seed=0)
    assert sorted(map(tuple, sum(by_len, []))) == sorted(map(tuple, sum(shuffled, [])))
    assert [len(d) for d in sum(by_len, [])] == sorted(lengths, reverse=True)
