#!/usr/bin/env python3
"""mmbert GPU check, the staged part: one process, each stage time-boxed and recorded as it finishes.

Run by benchmarks/gpu_check.sh (which adds `pytest -m gpu` and benchmarks/gpu_train.py), or alone
from the repository root:
    PYTHONPATH=src:tests/train:tests/model python3 benchmarks/gpu_check.py --out $OUT/check.json --budget 300
No shim and no flash-attn needed: the CUDA default backend is `torch-varlen` (torch's FA2 varlen
kernel); flash-attn is exercised too when its function imports. On a machine without CUDA the same
code runs at toy sizes with a CPU stand-in for the FA2 kernel (tests/model/fa2_standin.py) — a
syntax/logic dry run whose numbers mean nothing.

Stages (run in the order probe, semantics, parity, bf16_train, fsdp1, bench, compile, memory,
optimizer; listed here by topic; a stage is skipped when the remaining budget is below its estimate):
  probe      versions (torch, CUDA, driver), device, backends mmbert picks, torch-optimi's fused
             (Triton) step availability, bf16 matmul ceiling (8192³)
  semantics  torch's varlen kernel, mmbert's torch-varlen and varlen backends (and flash-attn when
             present) vs an fp32 reference: window |i−j| ≤ 64 exactly (boundary probe), no
             cross-document leakage, forward/backward error.           pass: "ok": true
  parity     a 6-layer model: bf16 CUDA backends vs fp32 eager hidden states (< 3e-2 relative)
  bf16_train 50 optimizer steps, the same batches, fp32 (varlen) vs bf16 autocast (CUDA default
             backend): losses within 1% (the issue's target)
  fsdp1      FSDP2 on a 1-rank NCCL group through the real loop: uninterrupted vs stop-at-14 +
             resume (GPU resume is not bitwise — FA2's backward uses atomics — so the figure is the
             largest loss difference after the resume)
  bench      mmbert-base fwd+bwd+MLM loss per micro-batch from MLMLoader (seq 1024 × 16 rows, mask
             .3; seq 8192 × 2, mask .15) per CUDA backend, eager; MFU from real document lengths
             (mmbert.train.flops.step_flops) and, for comparison, the seq_len formula
  optimizer  StableAdamW step time on mmbert-base's parameters: torch-optimi's auto choice vs the
             per-tensor loop
  memory     peak memory at 16k, 32k and 64k tokens per micro-batch (seq 1024, mask .3)
  compile    every layer compiled as parallelize(compile=True) does; recompiles and graph breaks
             counted over batches with different document counts, a shorter batch and seq 8192
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

T0 = time.time()
RES: dict = {}
ARGS = None
CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT / "tests", ROOT / "tests" / "train", ROOT / "tests" / "model"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
if not CUDA:  # dry run: torch's varlen op gets a CPU kernel (a float64 reference of FA2's semantics)
    import fa2_standin

    fa2_standin.install()


def cuda_backends() -> list[str]:
    """The packed CUDA backends to exercise: torch-varlen always, flash when its function imports."""
    from mmbert.model.attention import flash_attn_available
    return ["torch-varlen"] + (["flash"] if flash_attn_available() else [])


def save():
    Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ARGS.out).write_text(json.dumps(RES, indent=1, default=str))


def stage(name, est_s):
    def wrap(fn):
        def run():
            left = ARGS.budget - (time.time() - T0)
            if ARGS.stages and name not in ARGS.stages:
                return
            if left < est_s:
                RES[name] = {"skipped": f"{left:.0f}s left < estimate {est_s}s"}
                print(f"[{name}] SKIPPED ({left:.0f}s left)", flush=True)
                save()
                return
            t = time.time()
            print(f"[{name}] start ({left:.0f}s left)", flush=True)
            try:
                RES[name] = fn() or {}
            except Exception as e:  # record and go on
                RES[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            RES[name]["seconds"] = round(time.time() - t, 1)
            print(f"[{name}] done in {RES[name]['seconds']}s: "
                  f"{json.dumps({k: v for k, v in RES[name].items() if k != 'trace'}, default=str)[:1500]}",
                  flush=True)
            if CUDA:
                torch.cuda.empty_cache()
            save()
        return run
    return wrap


def sync():
    if CUDA:
        torch.cuda.synchronize()


def rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------- probe
@stage("probe", 5)
def probe():
    import platform
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": torch.cuda.get_device_name() if CUDA else "cpu"}
    if CUDA:
        out["capability"] = torch.cuda.get_device_capability()
        out["mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    if CUDA:
        import subprocess
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        out["driver"] = q.stdout.strip() or q.stderr.strip()[:200]
        out["flash_attention_built"] = torch.backends.cuda.is_flash_attention_available()
    try:
        import flash_attn
        out["flash_attn"] = {"file": getattr(flash_attn, "__file__", None),
                             "version": getattr(flash_attn, "__version__", None),
                             "has_varlen_func": hasattr(flash_attn, "flash_attn_varlen_func")}
    except Exception as e:
        out["flash_attn"] = f"not importable: {e}"
    for mod in ("triton", "optimi", "transformers"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:
            out[mod] = f"absent: {e}"
    from mmbert.model.attention import flash_attn_available, resolve_backend, torch_varlen_available
    out["mmbert_flash_available"] = flash_attn_available()
    out["mmbert_torch_varlen_available"] = torch_varlen_available() if CUDA else "cpu (stand-in)"
    out["mmbert_auto_backend_bf16"] = resolve_backend("auto", DEV, torch.bfloat16)
    out["mmbert_auto_backend_fp32"] = resolve_backend("auto", DEV, torch.float32)
    try:
        from mmbert.train.optim import step_implementation
        out["optimizer_step"] = step_implementation([torch.nn.Parameter(torch.zeros(4, device=DEV))])
    except Exception as e:
        out["optimizer_step"] = f"unknown: {e}"
    if CUDA:  # the MFU denominator actually reachable here
        n = 8192
        a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        out["bf16_matmul_tflops"] = round(2 * n ** 3 * 10 / (time.perf_counter() - t) / 1e12, 1)
        del a, b
    return out


# ----------------------------------------------------------------------------------------- semantics
def _reference(q, k, v, cu, wl, wr, scale):
    """fp32 dense masked attention: same document and i-wl <= j <= i+wr (-1 = unbounded)."""
    n = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(cu) - 1, device=q.device), (cu[1:] - cu[:-1]).long())
    i = torch.arange(n, device=q.device)
    m = doc[:, None] == doc[None, :]
    if wl >= 0:
        m &= i[None, :] >= i[:, None] - wl
    if wr >= 0:
        m &= i[None, :] <= i[:, None] + wr
    s = torch.einsum("nhd,mhd->hnm", q.float(), k.float()) * scale
    p = torch.softmax(s.masked_fill(~m, float("-inf")), -1)
    return torch.einsum("hnm,mhd->nhd", p, v.float())


@stage("semantics", 15)
def semantics():
    from torch.nn.attention.varlen import varlen_attn

    from mmbert.model.attention import AttentionPlan, attention
    out = {}
    h, d, w = 12, 64, 64
    lengths = [300, 129, 1000, 1, 64, 65, 700] if CUDA else [140, 70, 1, 65, 30]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=DEV)
    n, mx = int(cu[-1]), max(lengths)
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = torch.bfloat16 if CUDA else torch.bfloat16
    q, k, v = (torch.randn(n, h, d, generator=g).to(DEV, dt).requires_grad_() for _ in range(3))
    scale = d ** -0.5
    ref = _reference(q, k, v, cu, w, w, scale)
    impls = {"torch varlen_attn": lambda q, k, v: varlen_attn(
        q, k, v, cu, cu.clone(), mx, mx, scale=scale, window_size=(w, w)).reshape(n, h, d)}
    plans = {be: AttentionPlan.for_packed(cu, mx, be, w, DEV) for be in ["varlen"] + cuda_backends()}
    for be, plan in plans.items():
        impls[f"mmbert {be} backend"] = (lambda pl: lambda q, k, v: attention(q, k, v, pl, local=True)
                                         .reshape(n, h, d))(plan)
    gref = torch.autograd.grad((ref * torch.ones_like(ref)).sum(), (q, k, v))
    for name, fn in impls.items():
        o = fn(q, k, v)
        gq = torch.autograd.grad(o.float().sum(), (q, k, v))
        out[name] = {"fwd_rel_err_w64": rel(o, ref),
                     "fwd_rel_err_vs_w63": rel(o, _reference(q, k, v, cu, w - 1, w - 1, scale)),
                     "fwd_rel_err_vs_w65": rel(o, _reference(q, k, v, cu, w + 1, w + 1, scale)),
                     "grad_rel_err": [rel(a, b) for a, b in zip(gq, gref)]}
    # boundary probe: one query per long document sees keys at distance +-64 (score 8) and +-65
    # (score 12); only the +-64 ones may win. A query at a document start sees a key 1 position back,
    # in the previous document, with score 20: it must not be attended (no cross-document leakage).
    qp, kp, vp = (torch.zeros(n, 1, d, device=DEV, dtype=dt) for _ in range(3))
    dims = {w: 1, w + 1: 2, -w: 3, -(w + 1): 4}
    probes, start = [], 0
    for L in lengths:
        if L >= 2 * w + 3:
            i0 = start + L // 2
            qp[i0, 0, 0] = 1.0
            for dist_, dim in dims.items():
                kp[i0 + dist_, 0, 0] = 8.0 if abs(dist_) == w else 12.0
                vp[i0 + dist_, 0, dim] = 1.0
            probes.append(i0)
        start += L
    edge = lengths[0]  # first token of document 1
    qp[edge, 0, 0] = 1.0
    kp[edge - 1, 0, 0], vp[edge - 1, 0, 5] = 20.0, 1.0   # previous document
    kp[edge + 1, 0, 0], vp[edge + 1, 0, 6] = 5.0, 1.0    # own document
    names = {1: "+64", 2: "+65", 3: "-64", 4: "-65", 5: "prev-doc", 6: "own-doc"}
    probes_fns = [("torch varlen_attn", lambda: varlen_attn(qp, kp, vp, cu, cu.clone(), mx, mx, scale=1.0,
                                                             window_size=(w, w)))]
    for be, plan in plans.items():  # mmbert's scale is head_dim**-0.5: undo it on the keys
        probes_fns.append((f"mmbert {be}", (lambda pl: lambda: attention(qp, kp * d ** 0.5, vp, pl, local=True)
                                            .reshape(n, 1, d))(plan)))
    for name, fn in probes_fns:
        o = fn().float()
        seen = [sorted(names[j] for j in torch.nonzero(o[i0, 0] > 0.2).flatten().tolist() if j in names)
                for i0 in probes]
        edge_seen = sorted(names[j] for j in torch.nonzero(o[edge, 0] > 0.2).flatten().tolist() if j in names)
        out[f"boundary_{name}"] = {"probes": len(probes), "got": seen, "edge": edge_seen,
                                   "ok": all(x == ["+64", "-64"] for x in seen) and edge_seen == ["own-doc"]}
    out["ok"] = all(v["fwd_rel_err_w64"] < 2e-2 and v["fwd_rel_err_vs_w65"] > v["fwd_rel_err_w64"]
                    for k_, v in out.items() if isinstance(v, dict) and "fwd_rel_err_w64" in v) and \
        all(v["ok"] for k_, v in out.items() if k_.startswith("boundary_"))
    return out


# ----------------------------------------------------------------------------------------- parity
@stage("parity", 15)
def parity():
    from mmbert.model import EncoderConfig, build_model
    cfg = EncoderConfig.from_preset("tiny", vocab_size=32768, hidden_size=256, intermediate_size=384,
                                    num_hidden_layers=6, num_attention_heads=4, local_attention=128,
                                    max_position_embeddings=8192)
    torch.manual_seed(0)
    m = build_model(cfg, head="none").to(DEV).eval()
    lengths = [700, 129, 1, 64, 2000, 300] if CUDA else [90, 40, 1, 64]
    ids = torch.randint(5, 32768, (sum(lengths),), device=DEV)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=DEV)
    pos = torch.cat([torch.arange(L) for L in lengths]).to(DEV)
    out = {}
    with torch.no_grad():
        # fp32 eager oracle on the padded layout
        T = max(lengths)
        pad = torch.zeros(len(lengths), T, dtype=torch.long, device=DEV)
        att = torch.zeros_like(pad)
        for r, (a, L) in enumerate(zip(cu[:-1].tolist(), lengths)):
            pad[r, :L] = ids[a:a + L]
            att[r, :L] = 1
        oracle = m(pad, att, backend="eager").last_hidden_state[att.bool()]
        for be in ["varlen"] + cuda_backends():
            with torch.autocast(DEV.type, dtype=torch.bfloat16):
                hs = m(ids, cu_seqlens=cu, max_seqlen=max(lengths), position_ids=pos, backend=be).last_hidden_state
            out[f"{be}_bf16_vs_fp32_eager"] = rel(hs, oracle)
    out["ok"] = all(v < 3e-2 for v in out.values())
    return out


# ----------------------------------------------------------------------------------------- helpers
_SHARDS = None


def shards():
    global _SHARDS
    if _SHARDS is None:
        from synthetic import write_random_shards
        root = Path(tempfile.mkdtemp(prefix="mmbert-gpucheck-")) / "shards"
        langs = {f"l{i:02d}_Latn": (4000 if CUDA else 300, 400.0) for i in range(8)}
        write_random_shards(root, langs, vocab_size=256000, seed=0, sigma=1.2)
        _SHARDS = root
    return _SHARDS


def batches(seq, rows, mask, count, seed=0):
    from mmbert.data.loader import LoaderSpec, MLMLoader, StreamPhase
    L = MLMLoader(shards(), StreamPhase(temperature=0.5, mask_rate=mask, seq_len=seq),
                  LoaderSpec(seed=seed, rows_per_batch=rows))
    return [L.next_batch(rows) for _ in range(count)]


def base_model(preset="mmbert-base"):
    from mmbert.model import EncoderConfig, build_model
    cfg = EncoderConfig.from_preset(preset) if CUDA else EncoderConfig.from_preset(
        preset, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=1)
    torch.manual_seed(0)
    with torch.device(DEV):
        m = build_model(cfg, head="mlm")
    return m.train(), cfg


def fwd_bwd(m, b):
    with torch.autocast(DEV.type, dtype=torch.bfloat16):
        out = m(input_ids=b["input_ids"].to(DEV, non_blocking=True), cu_seqlens=b["cu_seqlens"].to(DEV),
                max_seqlen=int(b["max_seqlen"]), position_ids=b["position_ids"].to(DEV, non_blocking=True),
                labels=b["labels"].to(DEV, non_blocking=True))
    out.loss_sum.float().backward()
    return out


def timeit(m, bs, warm, iters):
    for b in bs[:warm]:
        fwd_bwd(m, b)
        m.zero_grad(set_to_none=True)
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for b in bs[warm:warm + iters]:
        t = time.perf_counter()
        fwd_bwd(m, b)
        m.zero_grad(set_to_none=True)
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), (torch.cuda.max_memory_allocated() / 2 ** 30 if CUDA else 0.0)


def peak_flops():
    p = RES.get("probe", {}).get("bf16_matmul_tflops")
    return 989e12, (p * 1e12 if p else None)


def cases():
    return [(1024, 16, 0.30), (8192, 2, 0.15)] if CUDA else [(256, 4, 0.3)]


# ----------------------------------------------------------------------------------------- bench
@stage("bench", 40)
def bench():
    from mmbert.train.flops import flops_per_token, step_flops
    m, cfg = base_model()
    out = {}
    for seq, rows, mask in cases():
        bs = batches(seq, rows, mask, 12 if CUDA else 4)
        ntok = rows * seq
        for be in cuda_backends() + ["varlen"]:
            m.model.attn_backend = be
            try:
                dt, mem = timeit(m, bs, 3 if CUDA else 1, 8 if CUDA else 2)
            except Exception as e:  # OOM or a backend failure: record, go on with the other
                out[f"{seq}x{rows}_{be}"] = f"{type(e).__name__}: {e}"[:300]
                m.zero_grad(set_to_none=True)
                continue
            tps = ntok / dt
            pk, meas = peak_flops()
            timed = bs[3 if CUDA else 1:][:8 if CUDA else 2]
            real = sum(step_flops(cfg, [b], int(b["num_masked"])) for b in timed) / len(timed)
            f = flops_per_token(cfg, seq, mask)
            out[f"{seq}x{rows}_{be}"] = {"ms": round(dt * 1e3, 1), "tokens_per_s": round(tps),
                                          "mfu_989_real_lengths": round(real / dt / pk, 3),
                                          "mfu_989_seq_len_formula": round(f * tps / pk, 3),
                                          "mfu_measured_peak": round(real / dt / meas, 3) if meas else None,
                                          "peak_gib": round(mem, 1)}
    return out


# ----------------------------------------------------------------------------------------- compile
@stage("compile", 100)
def compile_stage():
    from torch._dynamo.utils import counters
    recompiles = []

    class H(logging.Handler):
        def emit(self, r):
            recompiles.append(r.getMessage()[:600])

    torch._logging.set_logs(recompiles=True)
    logging.getLogger("torch._dynamo").addHandler(H())
    m, cfg = base_model()
    m.model.attn_backend = "auto"  # the CUDA default (torch-varlen without flash-attn)
    for layer in m.model.layers:
        layer.compile(dynamic=True, backend=os.environ.get("MMBERT_CHECK_COMPILE_BACKEND", "inductor"))
    seq, rows, mask = cases()[0]
    bs = batches(seq, rows, mask, 14 if CUDA else 4, seed=1)
    t = time.perf_counter()
    fwd_bwd(m, bs[0])
    m.zero_grad(set_to_none=True)
    sync()
    first = time.perf_counter() - t
    dt, mem = timeit(m, bs, 2, 10 if CUDA else 1)
    n_before = len(recompiles)
    # a short micro-batch (remainder / batch warm-up) and the 8192 layout: should not recompile
    extra = {}
    for label, (s2, r2, m2) in (("short", (seq, max(1, rows * 3 // 4), mask)),
                                ("seq8192", (8192, 2, 0.15) if CUDA else (512, 2, 0.15))):
        b = batches(s2, r2, m2, 2, seed=2)
        t = time.perf_counter()
        for x in b:
            fwd_bwd(m, x)
            m.zero_grad(set_to_none=True)
        sync()
        extra[label] = round(time.perf_counter() - t, 2)
    tps = rows * seq / dt
    pk, meas = peak_flops()
    from mmbert.train.flops import step_flops
    timed = bs[2:][:10 if CUDA else 1]
    real = sum(step_flops(cfg, [b], int(b["num_masked"])) for b in timed) / len(timed)
    return {"first_step_s": round(first, 1), "ms": round(dt * 1e3, 1), "tokens_per_s": round(tps),
            "mfu_989_real_lengths": round(real / dt / pk, 3),
            "mfu_measured_peak": round(real / dt / meas, 3) if meas else None,
            "peak_gib": round(mem, 1), "recompiles_steady": n_before, "recompiles_total": len(recompiles),
            "extra_batches_s": extra, "stats": dict(counters["stats"]),
            "graph_breaks": sum(counters["graph_break"].values()), "recompile_reasons": recompiles[:6]}


# ----------------------------------------------------------------------------------------- memory
@stage("memory", 25)
def memory():
    m, cfg = base_model()
    m.model.attn_backend = "auto"
    out = {}
    for rows in ((16, 32, 64) if CUDA else (4,)):
        seq = 1024 if CUDA else 256
        bs = batches(seq, rows, 0.3, 2, seed=3)
        try:
            dt, mem = timeit(m, bs, 1, 1)
            out[f"{rows * seq}_tokens"] = {"peak_gib": round(mem, 1), "ms": round(dt * 1e3, 1)}
        except torch.OutOfMemoryError:
            out[f"{rows * seq}_tokens"] = "OOM"
            m.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------- fsdp1
@stage("fsdp1", 40)
def fsdp1():
    import torch.distributed as dist
    import mmbert.train.parallel as par
    from mmbert.train.loop import train
    from synthetic import write_learnable_shards
    from tinyrun import tiny_config, tiny_recipe
    import mmbert.train.loop as loop
    par.Dist.enabled = property(lambda self: dist.is_initialized())  # let parallelize() shard on 1 rank
    sharded = []
    orig = par.parallelize

    def spy(model, d, **kw2):
        model = orig(model, d, **kw2)
        sharded.append(any(type(p).__name__ == "DTensor" for p in model.parameters()))
        return model

    loop.parallelize = spy
    root = Path(tempfile.mkdtemp(prefix="mmbert-fsdp1-"))
    write_learnable_shards(root / "shards")
    kw = dict(phases=["pretrain"], micro_batch_tokens=128, progress=False, eval=False, plots=False,
              parallel="fsdp", device=str(DEV))
    rec = lambda: tiny_recipe(scale=1.0, batch_warmup=False)  # noqa: E731

    calls = []

    def run(out, **extra):  # train() destroys the process group at its end (cleanup): one per call
        calls.append(out)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if CUDA else "gloo", init_method=f"file://{root}/pg-{len(calls)}",
                                    rank=0, world_size=1)
        return train(rec(), tiny_config(), root / "shards", out, **kw, **extra)

    full = run(root / "full")
    run(root / "cut", stop_at_step=14)
    resumed = run(root / "cut", resume=True)
    la = [json.loads(x)["loss"] for x in (root / "full" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    lb = [json.loads(x)["loss"] for x in (root / "cut" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    return {"steps": [len(la), len(lb)], "final": [full["tracks"]["main"]["loss"], resumed["tracks"]["main"]["loss"]],
            "max_abs_diff_after_resume": max(abs(a - b) for a, b in zip(la[12:], lb[12:])),
            "sharded_dtensor_params": sharded, "bitwise": la == lb, "first_losses": la[:3], "world_size_logged": json.loads(
                (root / "full" / "run.json").read_text())["launches"][-1]["world_size"], "checkpoints": sorted(
                p.name for p in (root / "cut" / "checkpoints" / "main").iterdir())}


# ----------------------------------------------------------------------------------------- bf16 vs fp32
@stage("bf16_train", 30)
def bf16_train():
    """50 steps from the same init on the same batches: fp32 (auto → varlen) vs bf16 autocast
    (auto → the CUDA default kernel). Target: losses within 1%."""
    from mmbert.model import EncoderConfig, build_model
    from mmbert.train.optim import build_optimizer
    from mmbert.step import mlm_loss_fn, train_step
    cfg = EncoderConfig.from_preset("tiny", vocab_size=256000, hidden_size=384 if CUDA else 64,
                                    intermediate_size=576 if CUDA else 96, num_hidden_layers=6 if CUDA else 2,
                                    num_attention_heads=6 if CUDA else 1, local_attention=128)
    steps = 50 if CUDA else 3
    bs = batches(1024 if CUDA else 256, 16 if CUDA else 2, 0.3, steps, seed=5)
    losses = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        m = build_model(cfg, head="mlm").to(DEV)
        opt = build_optimizer(m, lr=1e-3, weight_decay=1e-5)
        losses[name] = [train_step(m, opt, [b], mlm_loss_fn, autocast_dtype=amp).loss for b in bs]
        del m, opt
    rels = [abs(a - b) / abs(a) for a, b in zip(losses["fp32"], losses["bf16"])]
    return {"steps": steps, "max_rel_diff": max(rels), "last_rel_diff": rels[-1],
            "first_last_fp32": [losses["fp32"][0], losses["fp32"][-1]],
            "first_last_bf16": [losses["bf16"][0], losses["bf16"][-1]], "ok": max(rels) < 0.01}


# ----------------------------------------------------------------------------------------- optimizer
@stage("optimizer", 15)
def optimizer():
    """StableAdamW step on mmbert-base's parameters: what build_optimizer picks (optim.step_implementation:
    Triton kernels, else foreach, on CUDA) vs the per-tensor loop."""
    from mmbert.train.optim import build_optimizer
    m, cfg = base_model()
    for p_ in m.parameters():
        p_.grad = torch.randn_like(p_) * 1e-3
    out = {}
    for name in ("auto", "loop"):
        opt = build_optimizer(m, lr=1e-4, weight_decay=1e-5)
        out[f"{name}_impl"] = {k: opt.defaults[k] for k in ("foreach", "triton")}
        if name == "loop":
            for g in opt.param_groups:
                g["triton"] = g["foreach"] = False
        opt.step()
        sync()
        ts = []
        for _ in range(5 if CUDA else 1):
            t = time.perf_counter()
            opt.step()
            sync()
            ts.append(time.perf_counter() - t)
        out[f"{name}_ms"] = round(statistics.median(ts) * 1e3, 2)
        del opt
    return out


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for all stages")
    p.add_argument("--stages", nargs="*", default=None)
    ARGS = p.parse_args()
    RES["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(T0))
    for fn in (probe, semantics, parity, bf16_train, fsdp1, bench, compile_stage, memory, optimizer):
        fn()
    print("\n| stage | result |\n|---|---|")
    for k, v in RES.items():
        s = {kk: vv for kk, vv in v.items() if kk not in ("trace", "recompile_reasons")} if isinstance(v, dict) else v
        print(f"| {k} | {json.dumps(s, default=str)[:900]} |")


if __name__ == "__main__":
    main()
