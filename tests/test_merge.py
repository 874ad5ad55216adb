"""Tests for mmbert.merge: TIES / linear / EMA arithmetic, checkpoint I/O, bad input, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmbert
from mmbert import EncoderConfig
from mmbert.cli import main as cli_main
from mmbert.export.hf import save_pretrained
from mmbert.merge import (MergeError, ema_weights, linear_merge_tensors, merge, ties_merge_tensors,
                          trim_to_density)
from parity_tol import assert_fp32_close

CFG = EncoderConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                    num_attention_heads=2, local_attention=16, max_position_embeddings=64)


def mlm_names(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """transformers ModernBertForMaskedLM parameter names and shapes (tied decoder not stored)."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    s = {"model.embeddings.tok_embeddings.weight": (v, h), "model.embeddings.norm.weight": (h,)}
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        if l > 0:
            s[p + "attn_norm.weight"] = (h,)
        s.update({p + "attn.Wqkv.weight": (3 * h, h), p + "attn.Wo.weight": (h, h),
                  p + "mlp_norm.weight": (h,), p + "mlp.Wi.weight": (2 * i, h),
                  p + "mlp.Wo.weight": (h, i)})
    s.update({"model.final_norm.weight": (h,), "head.dense.weight": (h, h),
              "head.norm.weight": (h,), "decoder.bias": (v,)})
    return s


def random_state(cfg: EncoderConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in mlm_names(cfg).items()}


def write_dir(path: Path, state: dict[str, torch.Tensor], cfg: EncoderConfig = CFG,
              tokenizer: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    if tokenizer is not None:
        (path / "tokenizer.json").write_text(tokenizer)
    return path


def read_out(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ----------------------------------------------------------------------------- arithmetic
def test_ties_matches_hand_computed_example():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # task vectors: a = [+3, -1, +0.5, -2], b = [-1, -2, +4, +0.1], c = [+2, +0.2, -0.3, -3]
    a = base + torch.tensor([3.0, -1.0, 0.5, -2.0])
    b = base + torch.tensor([-1.0, -2.0, 4.0, 0.1])
    c = base + torch.tensor([2.0, 0.2, -0.3, -3.0])
    # density 0.5 keeps 2 of 4 per model: a→[3,0,0,-2], b→[0,-2,4,0], c→[2,0,0,-3]
    # weights (1, 2, 1) → weighted: a [3,0,0,-2], b [0,-4,8,0], c [2,0,0,-3]
    # elected signs from the sums [5,-4,8,-5] → [+,-,+,-]; all kept entries agree.
    # disjoint weighted mean: [(3+2)/(1+1), -4/2, 8/2, (-2-3)/(1+1)] = [2.5, -2, 4, -2.5]
    # λ = 0.5 → base + [1.25, -1, 2, -1.25]
    out = ties_merge_tensors(base, [a, b, c], weights=[1, 2, 1], density=0.5, lam=0.5)
    # float64: the merge rounds by ~eps64 ≪ the float64 defaults (1e-7)
    torch.testing.assert_close(out, torch.tensor([2.25, 0.0, 3.0, -0.25], dtype=torch.float64))


def test_ties_disjoint_mean_drops_disagreeing_entries():
    base = torch.zeros(3)
    a, b, c = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([3.0, -2.0, -5.0]), torch.tensor([-1.0, 4.0, 1.0])
    # sums [3, 1, -2] → signs [+, +, -]; agreeing entries: [1,3], [4], [-5] → means [2, 4, -5]
    out = ties_merge_tensors(base, [a, b, c], density=1.0)
    torch.testing.assert_close(out, torch.tensor([2.0, 4.0, -5.0], dtype=torch.float64))  # float64, as above


def test_trim_to_density_keeps_largest_and_at_least_one():
    d = torch.tensor([[0.1, -5.0], [3.0, -0.2]])
    # exact: trimming selects entries, it computes nothing
    torch.testing.assert_close(trim_to_density(d, 0.5), torch.tensor([[0.0, -5.0], [3.0, 0.0]]), atol=0, rtol=0)
    assert torch.count_nonzero(trim_to_density(d, 0.01)) == 1
    torch.testing.assert_close(trim_to_density(d, 1.0), d, atol=0, rtol=0)


def test_ties_density_one_single_model_is_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base, m = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for lam in (0.5, 1.0, 2.0):
        out = ties_merge_tensors(base, [m], density=1.0, lam=lam)
        # the reference rounds 3 times in fp32 on O(1) values (≲ 1e-6), the merge once: fp32 defaults
        torch.testing.assert_close(out.float(), base + lam * (m - base))


def test_ties_lambda_scales_merged_task_vector():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 8, generator=g)
    models = [base + torch.randn(8, 8, generator=g) for _ in range(3)]
    d1 = ties_merge_tensors(base, models, [1, 2, 3], density=0.4, lam=1.0) - base.double()
    d3 = ties_merge_tensors(base, models, [1, 2, 3], density=0.4, lam=3.0) - base.double()
    assert d1.abs().sum() > 0
    torch.testing.assert_close(d3, 3.0 * d1)  # float64: ~eps64 ≪ the defaults (1e-7)


def test_ema_weights_and_limits():
    w = ema_weights(3, 0.5)  # oldest → newest ∝ 0.25, 0.5, 1
    assert w == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])  # float64 powers and a sum: ~eps64
    assert ema_weights(4, 0.0) == [0.0, 0.0, 0.0, 1.0]
    assert ema_weights(4, 1.0) == pytest.approx([0.25] * 4)  # as above
    ts = [torch.full((3,), float(k)) for k in range(4)]
    # α = 1e-9: the older weights are ≤ 1e-9, so the merge is within 3e-9 of ts[-1] (fp32 defaults)
    torch.testing.assert_close(linear_merge_tensors(ts, ema_weights(4, 1e-9)).float(), ts[-1])
    # the float64 mean of 0..3 rounds by ~eps64 (fp32 defaults)
    torch.testing.assert_close(linear_merge_tensors(ts, ema_weights(4, 1.0)).float(), torch.full((3,), 1.5))


def test_trim_breaks_ties_to_exactly_k():
    d = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, -2.0])
    # k = 3: -2 plus the first two of the four |1|s in row-major order (exact: selection only)
    torch.testing.assert_close(trim_to_density(d, 0.5), torch.tensor([1.0, -1.0, 0, 0, 0, -2.0]), atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_kth_largest_radix_select_matches_sort(monkeypatch, chunk):
    from mmbert import merge as M

    g = torch.Generator().manual_seed(chunk)
    x = torch.randn(37, 11, generator=g).abs()
    x[3, :5] = x[0, 0]  # some ties
    flat = x.reshape(-1).sort(descending=True).values
    for k in (1, 5, 100, x.numel()):
        parts = lambda: [x.reshape(-1)[i:i + chunk] for i in range(0, x.numel(), chunk)]  # noqa: E731
        v, above = M._kth_largest(parts, k)
        assert v == flat[k - 1].item() and above == int((flat > flat[k - 1]).sum())


def test_chunked_file_merge_equals_in_memory(three, monkeypatch):
    """Tiny chunks (rows split across many reads) give the same bits as one chunk."""
    from mmbert import merge as M

    tmp, base, ms = three
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 7)
    out = merge(ms, tmp / "chunked", method="ties", base=base, weights=[1, 2, 0.5], density=0.3,
                lam=0.8, progress=False)
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 1 << 20)
    b, states, got = read_out(base), [read_out(m) for m in ms], read_out(out)
    for k in b:
        want = ties_merge_tensors(b[k], [s[k] for s in states], [1, 2, 0.5], 0.3, 0.8).float()
        assert torch.equal(got[k], want), k


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def three(tmp_path):
    base = random_state(CFG, 0)
    dirs = []
    for s in (1, 2, 3):
        delta = random_state(CFG, 10 + s)
        dirs.append(write_dir(tmp_path / f"m{s}", {k: base[k] + 0.1 * delta[k] for k in base},
                              tokenizer='{"tok": 1}'))
    return tmp_path, write_dir(tmp_path / "base", base), dirs


def test_merging_identical_checkpoints_returns_it(tmp_path):
    st = random_state(CFG, 5)
    base = write_dir(tmp_path / "base", random_state(CFG, 6))
    ms = [write_dir(tmp_path / f"same{i}", st) for i in range(3)]
    for method, kw in [("linear", {}), ("linear", {"weights": [1, 5, 2]}), ("ema", {"alpha": 0.3}),
                       ("ties", {"base": base, "density": 1.0})]:
        out = merge(ms, tmp_path / f"out-{method}-{len(kw)}", method=method, progress=False, **kw)
        got = read_out(out)
        assert got.keys() == st.keys()
        for k in st:
            assert torch.equal(got[k], st[k]), (method, k)


def test_checkpoint_merge_equals_tensor_functions(three):
    tmp, base, ms = three
    out = merge(ms, tmp / "ties", method="ties", base=base, weights=[1, 2, 0.5], density=0.3,
                lam=0.8, progress=False)
    b, states = read_out(base), [read_out(m) for m in ms]
    got = read_out(out)
    for k in b:
        want = ties_merge_tensors(b[k], [s[k] for s in states], [1, 2, 0.5], 0.3, 0.8).float()
        torch.testing.assert_close(got[k], want)  # the same float64 arithmetic cast to fp32: fp32 defaults
    rec = json.loads((out / "merge.json").read_text())
    assert rec["method"] == "ties" and rec["density"] == 0.3 and rec["lambda"] == 0.8
    assert rec["weights"] == [1, 2, 0.5] and rec["base"] == str(base.resolve())
    assert len(rec["models"]) == 3
    assert (out / "tokenizer.json").read_text() == '{"tok": 1}'
    assert json.loads((out / "config.json").read_text())["hidden_size"] == CFG.hidden_size

    out = merge(ms, tmp / "ema", method="ema", alpha=0.5, progress=False)
    w = ema_weights(3, 0.5)
    k = "model.layers.1.mlp.Wi.weight"
    # the reference sums 3 terms in fp32 (≲ 3 eps32 relative), the merge in float64: fp32 defaults
    torch.testing.assert_close(read_out(out)[k], sum(wi * s[k] for wi, s in zip(w, states)))


def test_tied_decoder_read_once_from_hf_dirs(tmp_path):
    """A transformers dir may store decoder.weight beside, or instead of, the embeddings."""
    a, b = random_state(CFG, 1), random_state(CFG, 2)
    emb = "model.embeddings.tok_embeddings.weight"
    both = dict(a, **{"decoder.weight": a[emb].clone()})
    only_dec = {("decoder.weight" if k == emb else k): v for k, v in b.items()}
    out = merge([write_dir(tmp_path / "a", both), write_dir(tmp_path / "b", only_dec)],
                tmp_path / "out", progress=False)
    got = read_out(out)
    assert "decoder.weight" not in got
    torch.testing.assert_close(got[emb], (a[emb] + b[emb]) / 2)  # both round (a + b)/2 once to fp32: ≤ 1 ulp


def test_merged_dir_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ModernBertConfig(**{k: v for k, v in CFG.to_hf_dict().items()
                                           if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    m = transformers.ModernBertForMaskedLM(cfg).eval()
    m.save_pretrained(tmp_path / "hf")
    out = merge([tmp_path / "hf", tmp_path / "hf"], tmp_path / "merged", progress=False)
    m2 = transformers.ModernBertForMaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([[2, 7, 9, 11, 1]])
    with torch.no_grad():
        # exact: the mean of two equal weights is the weight, so transformers runs the same model
        torch.testing.assert_close(m2(ids).logits, m(ids).logits, atol=0, rtol=0)
        ours = mmbert.from_pretrained(out).eval()  # and it is one of our model directories
        # ours vs transformers, fp32: the derived parity bound (widest reduction: intermediate 24; 2 layers + 2)
        assert_fp32_close(ours(ids).logits, m(ids).logits, widest=24, depth=4)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_one_clear_error(three, tmp_path):
    tmp, base, ms = three
    with pytest.raises(MergeError, match="pass --base"):
        merge(ms, tmp / "o", method="ties", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge(ms, tmp / "o", method="ties", base=tmp / "nope", progress=False)
    for d in (0.0, -0.1, 1.5):
        with pytest.raises(MergeError, match=r"--density must be in \(0, 1\]"):
            merge(ms, tmp / "o", method="ties", base=base, density=d, progress=False)
    with pytest.raises(MergeError, match="weights for 3 models"):
        merge(ms, tmp / "o", weights=[1, 2], progress=False)
    with pytest.raises(MergeError, match="alpha"):
        merge(ms, tmp / "o", method="ema", alpha=2.0, progress=False)

    bigger = CFG.replace(intermediate_size=32)
    odd = write_dir(tmp / "odd", random_state(bigger, 0), bigger)
    with pytest.raises(MergeError, match="intermediate_size"):
        merge([ms[0], odd], tmp / "o", progress=False)
    other_vocab = CFG.replace(vocab_size=48)
    ov = write_dir(tmp / "ov", random_state(other_vocab, 0), other_vocab)
    with pytest.raises(MergeError, match="different vocabularies"):
        merge([ms[0], ov], tmp / "o", progress=False)
    with pytest.raises(MergeError, match="different vocabularies"):
        merge(ms, tmp / "o", method="ties", base=ov, progress=False)
    # same config, one tensor with a different shape (a corrupt or hand-edited checkpoint)
    st = random_state(CFG, 0)
    st["head.dense.weight"] = torch.zeros(CFG.hidden_size, CFG.hidden_size + 1)
    with pytest.raises(MergeError, match="head.dense.weight has shape"):
        merge([ms[0], write_dir(tmp / "bad", st)], tmp / "o", progress=False)
    with pytest.raises(MergeError, match="tokenizer"):
        merge([ms[0], write_dir(tmp / "tok2", random_state(CFG, 0), tokenizer='{"tok": 2}')],
              tmp / "o", progress=False)
    merge(ms[:1], tmp / "done", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge(ms[:1], tmp / "done", progress=False)
    assert not (tmp / "o").exists()  # nothing written by any refused merge


def test_cli_merge(three, capsys):
    tmp, base, ms = three
    rc = cli_main(["merge", "--method", "ties", "--base", str(base), "--models", *map(str, ms),
                   "--density", "0.5", "--weights", "1", "1", "2", "--lambda", "0.9",
                   "--out", str(tmp / "cli")])
    assert rc == 0
    assert json.loads((tmp / "cli" / "merge.json").read_text())["lambda"] == 0.9
    rc = cli_main(["merge", "--method", "ties", "--models", *map(str, ms), "--out", str(tmp / "x")])
    err = capsys.readouterr().err
    assert rc == 1 and "error: TIES merges task vectors relative to a base" in err


# ----------------------------------------------------------------------------- mergekit parity
def test_ties_matches_mergekit(three):
    """Same inputs through mergekit's own TIES (optional: skipped when mergekit is absent)."""
    pytest.importorskip("mergekit")
    from mergekit.merge_methods.api import merge_state_dicts

    tmp, base, ms = three
    weights, density, lam = [1.0, 0.5, 2.0], 0.35, 0.7
    out = merge(ms, tmp / "ours", method="ties", base=base, weights=weights, density=density,
                lam=lam, progress=False)
    ref = merge_state_dicts([read_out(base)] + [read_out(m) for m in ms], "ties", base=0,
                            parameters={"weight": weights, "density": density, "lambda": lam})
    got = read_out(out)
    assert got.keys() == ref.keys()
    for k in ref:
        # mergekit works in fp32 (sums in another order): rtol ≈ 80 eps32 on sums of ≤ 3 O(1)
        # terms, atol for entries that cancel to ~0
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def test_truncated_safetensors_is_one_line_for_merge_and_init_from(tmp_path, capsys):
    from mmbert.cli import main

    from mmbert.model import build_model

    save_pretrained(build_model(EncoderConfig.from_preset("tiny", vocab_size=128, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=2,
                                                          max_position_embeddings=64, local_attention=16)),
                    tmp_path / "a")
    w = tmp_path / "a" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])  # what an interrupted copy leaves
    for argv in (["merge", "--models", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "o")],
                 ["init-from", "--model", str(tmp_path / "a"), "--preset", "tiny", "--out", str(tmp_path / "o")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"{w} is not a readable safetensors file" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
