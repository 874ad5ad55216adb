"""Our encoder as an ONNX file for ONNX Runtime, optionally int8 (dynamic quantisation), verified.

    mmbert export --format onnx --model DIR --out out/onnx                  # model.onnx, fp32
    mmbert export --format onnx --model DIR --out out/onnx --quantize int8  # + model.int8.onnx

    from mmbert.export.onnx import export_onnx, session, run_session
    info = export_onnx(model, "out/onnx", pooling="mean", quantize="int8")
    sess = session("out/onnx/model.onnx")
    vecs = run_session(sess, [[2, 17, 42, 1], [2, 5, 1]])        # float32 [2, hidden]

The graph: inputs `input_ids` and `attention_mask`, int64 [batch, seq] (right padding, 1 = real
token), both axes dynamic; output `embedding` float32 [batch, hidden] (pooling "mean" over real
tokens, or "first" = the CLS token) or `last_hidden_state` [batch, seq, hidden] (pooling "none";
rows at padding positions are not meaningful, mask them). It is traced from our padded SDPA path
(`backend="sdpa"`: explicit masks for padding and the local window, which ONNX expresses; the
packed varlen path's data-dependent gathers do not export), in float32, with torch.onnx.export's
TorchScript exporter (dynamo=False: dynamic batch and length without the onnxscript toolchain).
int8 is onnxruntime.quantization.quantize_dynamic (per-tensor int8 weights of every MatMul,
activations quantised at run time) — the standard ORT recipe, a peer in `mmbert bench`.

`export_onnx` runs the written files once in ONNX Runtime against our fp32 packed `embed` on a
few documents of different lengths and records the largest difference (fp32) and the cosine
(int8) in onnx_export.json beside the model.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from mmbert.data.packing import pad_rows
from mmbert.inference import _bare_encoder, _load, embed
from mmbert.model.encoder import mean_pool
from mmbert.threads import default_threads
from mmbert.utils import PAD_ID, atomic_write

POOLINGS = ("mean", "first", "none")
QUANTIZE = ("int8",)
OPSET = 17  # LayerNormalization as one op (ORT fuses it); supported by every onnxruntime ≥ 1.14


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ValueError("ONNX export needs the onnx and onnxruntime packages; install them with: "
                         "pip install 'mmbert[onnx]'") from e


class OnnxEncoder(nn.Module):
    """input_ids, attention_mask [B, T] → pooled [B, hidden] or hidden states [B, T, hidden]."""

    def __init__(self, encoder: nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, backend="sdpa").last_hidden_state  # [B, T, H]
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "none":
            return hidden
        return mean_pool(hidden, attention_mask)


def export_onnx(model: nn.Module | str, out_dir: str | os.PathLike, *, pooling: str = "mean",
                quantize: str | None = None, verify: bool = True, opset: int = OPSET) -> dict[str, Any]:
    """Write out_dir/model.onnx (fp32), with quantize="int8" also model.int8.onnx, the model's
    tokenizer files when it has them, and onnx_export.json (pooling, names, verification).
    Returns that record."""
    _require_onnx()
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of: {', '.join(QUANTIZE)}")
    model = _load(model, head="none")
    encoder = _bare_encoder(model)
    import copy

    wrapped = OnnxEncoder(copy.deepcopy(encoder).float().eval(), pooling).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    output = "last_hidden_state" if pooling == "none" else "embedding"
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            output: {0: "batch", 1: "sequence"} if pooling == "none" else {0: "batch"}}
    # trace with a length past the local window so the band mask is traced as a function of T
    T = min(encoder.config.max_position_embeddings, max(16, encoder.config.local_attention + 8))
    ids = torch.randint(5, encoder.config.vocab_size, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T // 2:] = 0

    def write_fp32(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
            torch.onnx.export(wrapped, (ids, mask), tmp, input_names=["input_ids", "attention_mask"],
                              output_names=[output], dynamic_axes=axes, opset_version=opset, dynamo=False)

    files = {"fp32": atomic_write(out / "model.onnx", write_fp32).name}
    if quantize == "int8":
        files["int8"] = quantize_int8(out / "model.onnx", out / "model.int8.onnx").name
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save(out)
    info: dict[str, Any] = {"format": 1, "pooling": pooling, "inputs": ["input_ids", "attention_mask"],
                            "output": output, "hidden_size": encoder.config.hidden_size, "opset": opset,
                            "pad_token_id": encoder.config.pad_token_id, "files": files}
    if verify:
        info["verification"] = verify_onnx(encoder, out, files, pooling)
    atomic_write(out / "onnx_export.json", json.dumps(info, indent=2) + "\n")
    return info


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime dynamic quantisation: int8 weights (per tensor) for every MatMul, uint8
    activations quantised per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: str) -> None:
        quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])

    return atomic_write(dst, write)


def session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU InferenceSession with `threads` intra-op threads (default: mmbert's
    thread policy, the cores other processes leave free)."""
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no ONNX model here; write one with: mmbert export --format onnx")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(sess, docs: Sequence[Sequence[int]], pad_id: int = PAD_ID):
    """One padded batch of token-id lists through a session; the graph's single output (numpy)."""
    ids, mask = pad_rows(docs, pad_id)
    return sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


def verify_onnx(encoder: nn.Module, out: Path, files: dict[str, str], pooling: str) -> dict[str, float]:
    """Each written file against our fp32 packed `embed` on documents of lengths 1 … past the
    local window: largest |difference| (and the reference's largest |value|), smallest cosine."""
    import numpy as np

    cfg = encoder.config
    g = torch.Generator().manual_seed(0)
    lengths = sorted({1, 7, cfg.local_attention // 2 + 3, min(cfg.max_position_embeddings, cfg.local_attention + 9)})
    docs = [torch.randint(5, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    ref = embed(encoder, docs, pooling=pooling, dtype="fp32")
    res: dict[str, float] = {}
    for kind, name in files.items():
        got = run_session(session(out / name), docs, cfg.pad_token_id)
        if pooling == "none":
            got_t = torch.cat([torch.from_numpy(np.ascontiguousarray(got[i, :len(d)])) for i, d in enumerate(docs)])
            ref_t = torch.cat(ref)
        else:
            got_t, ref_t = torch.from_numpy(got), ref
        res[f"{kind}_max_abs_diff"] = float((got_t.double() - ref_t.double()).abs().max())
        res[f"{kind}_min_cosine"] = float(torch.nn.functional.cosine_similarity(got_t.double(), ref_t.double()).min())
    res["ref_max_abs"] = float(ref_t.abs().max())
    return res
