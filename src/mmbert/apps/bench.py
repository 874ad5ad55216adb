"""The ModernBERT efficiency benchmark, side by side in one process (issue 8).

    mmbert bench --quick                          # ≤ 3 min: mmbert-small, fixed512 + normal256
    mmbert bench --json out/eff.json              # full run: both presets, four sets
    python benchmarks/efficiency.py --quick       # the same thing

Method (after ModernBERT, Warner et al. 2024, §4 "efficiency"): synthetic token sets — fixed 512,
lengths ~ Normal(256, 64), fixed 8192, lengths ~ Normal(4096, 1024) — shuffled once and cut into
the same batches (a token budget per batch) for every system. Each system is warmed up once (the
first batch; a 512-token prefix on the long sets); then rounds: each round times one whole pass of
every system in turn and a GEMM, so load from other jobs on a shared machine hits all systems
alike; a system leaves after the round in which its passes exceed the per-cell budget. The median
pass gives tokens/s (real tokens only; padding is waste).

Systems, same weights where they share an architecture (ours is copied into transformers through
save_pretrained → from_pretrained, and into ONNX through export/onnx.py):
- mmbert: ours, the packed varlen path (no compute on padding), in the dtype `embed` picks
  ("auto": measured once per machine, see inference.calibrate_dtype, the record is printed; an
  int8 answer is checked on the benchmark's model with random token ids, which random weights
  always pass — check a trained model with benchmarks/int8_trained.py); mmbert_fp32, mmbert_bf16
  and mmbert_int8 (`embed(dtype="int8")`, dynamic quantisation) beside it, those the default is not;
- hf_modernbert: transformers ModernBertModel, SDPA (its default on CPU), padded batches;
- onnxrt / onnxrt_int8: ONNX Runtime (CPU provider, all graph optimisations) on our encoder
  exported by torch.onnx.export, fp32 and int8 dynamic quantisation (onnxruntime.quantization),
  padded batches; skipped when onnxruntime is not installed;
- xlmr: transformers XLMRobertaModel, same width, 12 layers (MiniLM-L12-H384 / XLM-R-base shapes),
  max length 512 so the long sets are n/a, padded batches, random weights.
Padded peers see the shuffled batches and, as `<name>_sorted`, batches cut from the documents
sorted by length (what a careful user does; less padding) — on sets whose lengths vary.
Peers run in fp32 and, with `--peer-dtypes fp32 bf16`, also in bf16. Each system's mean-pooled
embeddings of the first batch are compared with ours in fp32: the cosine column (min over docs).

MFU = achieved FLOP/s ÷ this machine's measured GEMM FLOP/s (a 2048³ matmul, fp32 and bf16, timed
once per round next to the passes; MFU divides by the median over the whole run). FLOPs per real token = 2 × (weights of the linear layers) + attention
4·hidden per attended (query, key) pair, counted with the real window on local layers and the
real document length on global ones — work on padding is not counted as useful.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from mmbert.allocator import malloc_state, tune_malloc
from mmbert.data.packing import pad_rows
from mmbert.export.hf import save_pretrained
from mmbert.export.onnx import export_onnx, session
from mmbert.inference import (DTYPES, SPEED_FLAGS, calibrate_dtype, cpu_flags, cpu_has_fast_bf16, cpu_model,
                              cpu_vendor, default_threads, pack, prepare, resolve_dtype)
from mmbert.model import EncoderConfig, build_model
from mmbert.model.encoder import mean_pool
from mmbert.utils import atomic_write

SETS = ("fixed512", "normal256", "fixed8192", "normal4096")
SYSTEMS = ("mmbert", "hf_modernbert", "xlmr")
PEER_MAX_LEN = {"xlmr": 512}
# documents per set: full run / --quick (sized for ≤ 10 min / ≤ 3 min on a 2-core Xeon)
DOCS = {"fixed512": (8, 4), "normal256": (16, 8), "fixed8192": (1, 1), "normal4096": (2, 1)}
# XLM-R-style peers: the real models' shapes at the same width (MiniLM-L12-H384, XLM-R base)
XLMR_SHAPES = {384: dict(num_attention_heads=12, intermediate_size=1536),
               768: dict(num_attention_heads=12, intermediate_size=3072)}


# ----------------------------------------------------------------------------- data
def set_lengths(name: str, n_docs: int, seed: int = 0) -> list[int]:
    g = random.Random(seed)
    if name == "fixed512":
        return [512] * n_docs
    if name == "fixed8192":
        return [8192] * n_docs
    if name == "normal256":
        return [min(512, max(16, round(g.gauss(256, 64)))) for _ in range(n_docs)]
    if name == "normal4096":
        return [min(8192, max(64, round(g.gauss(4096, 1024)))) for _ in range(n_docs)]
    raise ValueError(f"unknown set {name!r}; choose from {', '.join(SETS)}")


def make_batches(lengths: list[int], vocab_size: int, batch_tokens: int, seed: int = 0,
                 by_length: bool = False) -> list[list[list[int]]]:
    """Random token ids (never special ids 0-4), shuffled (or, `by_length`, sorted longest first),
    grouped greedily by token budget; every system gets exactly these batches in this order."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(5, vocab_size, (n,), generator=g).tolist() for n in lengths]
    random.Random(seed).shuffle(docs)
    if by_length:
        docs.sort(key=len, reverse=True)
    batches, cur, used = [], [], 0
    for d in docs:
        if cur and used + len(d) > batch_tokens:
            batches.append(cur)
            cur, used = [], 0
        cur.append(d)
        used += len(d)
    if cur:
        batches.append(cur)
    return batches


# ----------------------------------------------------------------------------- FLOPs and the machine
def attended_pairs(length: int, half_window: int | None) -> int:
    """(query, key) pairs inside one document: all L² globally, |i−j| ≤ w locally."""
    if half_window is None or length <= half_window:
        return length * length
    return length * (2 * half_window + 1) - half_window * (half_window + 1)


def model_flops(lengths: list[int], *, linear_params: int, hidden: int, layer_windows: list[int | None]) -> float:
    """Forward FLOPs for these documents (no padding): 2·params per token + 4·hidden per pair per layer."""
    tokens = sum(lengths)
    attn = sum(4 * hidden * attended_pairs(n, w) for n in lengths for w in layer_windows)
    return 2.0 * linear_params * tokens + attn


def linear_params(model: torch.nn.Module) -> int:
    """Weights that take part in matmuls (every nn.Linear inside the encoder layers)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def gemm_flops_per_s(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def machine_info(threads: int) -> dict:
    import transformers  # lazy, as every transformers/onnxruntime import here: `mmbert bench --help` stays quick

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    flags = cpu_flags()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"cpu": cpu_model(), "cpu_vendor": cpu_vendor(), "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
            "cores": cores, "threads": threads, "amx_bf16": cpu_has_fast_bf16(), "onnxruntime": ort_version,
            "malloc": malloc_state(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ----------------------------------------------------------------------------- systems
@dataclass
class System:
    name: str
    dtype: torch.dtype
    run: Callable[[list[list[int]]], None]  # one batch of documents
    flops: Callable[[list[int]], float]  # useful FLOPs for these document lengths
    max_len: int | None = None
    extra: dict = field(default_factory=dict)
    embed: Callable[[list[list[int]]], torch.Tensor] | None = None  # mean-pooled [docs, H], for the cosine
    padded: bool = False  # gets a `_sorted` twin on sets with varying lengths
    sorted_batches: bool = False


def _mean_fp32(mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A padded peer's sentence embedding, pooled in fp32 (the cosine check's common precision)."""
    return mean_pool(hidden.float(), mask)


def _named(name: str, dtype: torch.dtype) -> str:
    return name if dtype == torch.float32 else f"{name}_bf16"


def build_systems(preset: str, peer_dtypes: list[torch.dtype], ours_dtype: str = "auto",
                  seed: int = 0, onnx: bool = True, threads: int | None = None, int8: bool = True) -> list[System]:
    try:
        import transformers
    except ImportError as e:
        raise ValueError("the benchmark compares against transformers, which is not installed; "
                         "install it with: pip install 'mmbert[dev]'") from e

    torch.manual_seed(seed)
    cfg = EncoderConfig.from_preset(preset)
    ours = build_model(cfg, head="none").eval()
    lin = linear_params(ours)
    half = cfg.local_attention // 2
    windows = [None if cfg.is_global_layer(i) else half for i in range(cfg.num_hidden_layers)]
    flops_mm = lambda lengths: model_flops(lengths, linear_params=lin, hidden=cfg.hidden_size,  # noqa: E731
                                           layer_windows=windows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        probe = [torch.randint(5, cfg.vocab_size, (n,)).tolist() for n in (128, 96, 64, 32)]
    dt = resolve_dtype(ours_dtype, torch.device("cpu"), ours, lambda: probe)

    def packed_system(name: str, dtype: torch.dtype) -> System:
        fast = prepare(ours, dtype)

        def run(batch):
            p = pack(batch, torch.device("cpu"))
            return p, fast(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state

        def embed(batch):
            p, h = run(batch)
            cu = p.cu_seqlens.tolist()
            return torch.stack([h[a:b].float().mean(0) for a, b in zip(cu[:-1], cu[1:])])

        return System(name, dtype, run, flops_mm, embed=embed)

    systems = [packed_system("mmbert", dt)]
    if dt != torch.float32 and torch.float32 in peer_dtypes:  # ours in fp32 too: same-dtype ratios and MFU
        systems.append(packed_system("mmbert_fp32", torch.float32))
    if dt != torch.bfloat16:  # the float dtype "auto" falls back to where int8 fails a model's check
        systems.append(packed_system("mmbert_bf16", torch.bfloat16))
    if dt != torch.qint8 and int8:  # our int8 path, next to ONNX Runtime's int8
        systems.append(packed_system("mmbert_int8", torch.qint8))

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(ours, d)  # identical weights in transformers' ModernBertModel
        hf_models = {pdt: transformers.ModernBertModel.from_pretrained(d, attn_implementation="sdpa",
                                                                       dtype=pdt).eval()
                     for pdt in peer_dtypes}
    for pdt, hf in hf_models.items():
        def run_hf(batch, hf=hf):
            ids, mask = pad_rows(batch, cfg.pad_token_id)
            return mask, hf(input_ids=ids, attention_mask=mask).last_hidden_state

        systems.append(System(_named("hf_modernbert", pdt), pdt, run_hf, flops_mm,
                              embed=lambda b, run=run_hf: _mean_fp32(*run(b)), padded=True))

    if onnx:
        systems += onnx_systems(ours, flops_mm, threads)

    shape = XLMR_SHAPES.get(cfg.hidden_size, dict(num_attention_heads=cfg.num_attention_heads,
                                                  intermediate_size=4 * cfg.hidden_size))
    xcfg = transformers.XLMRobertaConfig(vocab_size=250002, hidden_size=cfg.hidden_size, num_hidden_layers=12,
                                         max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                                         **shape)
    xlmr = transformers.XLMRobertaModel._from_config(xcfg, attn_implementation="sdpa",
                                                     add_pooling_layer=False).eval()
    x_lin = linear_params(xlmr)
    flops_x = lambda lengths: model_flops(lengths, linear_params=x_lin, hidden=cfg.hidden_size,  # noqa: E731
                                          layer_windows=[None] * 12)
    for pdt in peer_dtypes:
        xm = xlmr if pdt == torch.float32 else copy.deepcopy(xlmr).to(pdt)

        def run_x(batch, xm=xm):
            ids, mask = pad_rows(batch, 1)
            ids = torch.where(mask.bool(), 5 + (ids - 5) % (xcfg.vocab_size - 5), ids)  # into its vocab
            xm(input_ids=ids, attention_mask=mask)

        systems.append(System(_named("xlmr", pdt), pdt, run_x, flops_x, max_len=512, padded=True))
    return systems


def onnx_systems(ours: torch.nn.Module, flops: Callable[[list[int]], float], threads: int | None) -> list[System]:
    """ONNX Runtime fp32 and int8 (dynamic quantisation) on our encoder's weights; [] without
    onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime not installed: ONNX Runtime peers skipped (pip install 'mmbert[onnx]')")
        return []
    with tempfile.TemporaryDirectory(prefix="mmbert-bench-onnx-") as tmp:  # sessions hold the graphs in memory
        export_onnx(ours, tmp, pooling="none", quantize="int8", verify=False)
        sessions = {name: session(Path(tmp) / file, threads=threads)
                    for name, file in (("onnxrt", "model.onnx"), ("onnxrt_int8", "model.int8.onnx"))}
    pad = ours.config.pad_token_id
    out = []
    for name, sess in sessions.items():

        def run(batch, sess=sess):
            ids, mask = pad_rows(batch, pad)
            return mask, sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

        def embed(batch, run=run):
            mask, h = run(batch)
            return _mean_fp32(mask, torch.from_numpy(h))

        out.append(System(name, torch.float32 if name == "onnxrt" else torch.int8, run, flops, embed=embed,
                          padded=True))
    return out


# ----------------------------------------------------------------------------- timing
@torch.inference_mode()
def time_set(systems: list[System], batches: list[list[list[int]]], repeats: int,
             cell_budget_s: float, sorted_batches: list[list[list[int]]] | None = None
             ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Round-robin timing: every round times one whole pass of each system over the set, then a
    GEMM in each dtype, so load changes from other jobs on a shared machine hit all systems alike.
    Each system is warmed up first on the first batch (a 512-token prefix for long documents: a
    whole 8k pass of a padded peer costs minutes here, and first-call overhead is negligible at
    that size). A system stops after the round in which its passes exceed `cell_budget_s`.
    Systems marked `sorted_batches` get `sorted_batches` (the same documents, cut after sorting
    by length). Returns pass times per system and the median GEMM FLOP/s per dtype."""
    sets = [sorted_batches if s.sorted_batches and sorted_batches else batches for s in systems]
    first = batches[0]
    warm = first if max(len(d) for d in first) <= 512 else [first[0][:512]]
    for s in systems:
        s.run(warm)
    times: dict[int, list[float]] = {i: [] for i in range(len(systems))}
    gemm: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        active = [i for i in times if sum(times[i]) <= cell_budget_s]
        if not active:
            break
        for i in active:
            t = time.perf_counter()
            for b in sets[i]:
                systems[i].run(b)
            times[i].append(time.perf_counter() - t)
        gemm["fp32"].append(gemm_flops_per_s(torch.float32, repeats=1))
        gemm["bf16"].append(gemm_flops_per_s(torch.bfloat16, repeats=1))
    return ({i: v for i, v in times.items()}, {k: statistics.median(v) for k, v in gemm.items()})


@dataclass
class BenchConfig:
    presets: tuple[str, ...] = ("mmbert-small", "mmbert-base")
    sets: tuple[str, ...] | None = None  # None: all, or the --quick pair
    quick: bool = False
    batch_tokens: int = 8192
    repeats: int = 3
    cell_budget_s: float = 20.0
    peer_dtypes: tuple[str, ...] = ("fp32",)
    ours_dtype: str = "auto"
    threads: int | None = None
    seed: int = 0
    onnx: bool = True


def cosines(systems: list[System], batch: list[list[int]]) -> dict[str, float]:
    """Smallest cosine over the batch's documents between each system's mean-pooled embeddings and
    ours in fp32 (systems without `embed`, other models, are left out)."""
    ref_sys = next((s for s in systems if s.name in ("mmbert_fp32", "mmbert") and s.dtype == torch.float32), None)
    if ref_sys is None:
        return {}
    with torch.inference_mode():
        ref = ref_sys.embed(batch).double()
        return {s.name: float(torch.nn.functional.cosine_similarity(s.embed(batch).double(), ref).min())
                for s in systems if s.embed is not None and not s.sorted_batches}


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """All presets × sets × systems; returns the JSON-shaped result (see module docstring)."""
    if cfg.quick:
        cfg.presets, cfg.sets = ("mmbert-small",), cfg.sets or ("fixed512", "normal256")
        cfg.cell_budget_s = min(cfg.cell_budget_s, 10.0)
    cfg.sets = cfg.sets or SETS
    bad = [s for s in cfg.sets if s not in SETS]
    if bad:
        raise ValueError(f"unknown set(s) {bad}; choose from {', '.join(SETS)}")
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    tune_malloc()  # as embed runs; the peers in this process get the same allocator
    peer_dtypes = [DTYPES[d] for d in cfg.peer_dtypes]
    calibration = calibrate_dtype() if cfg.ours_dtype == "auto" else {"dtype": cfg.ours_dtype, "source": "--dtype"}
    log("dtype auto → {dtype} ({reason}; {source}{extra})".format(
        **{"reason": "given", **calibration},
        extra="".join(f", {k} {calibration[k]:.4g}" for k in ("fp32_s", "bf16_s", "int8_s", "speedup", "cosine",
                                                                   "int8_cosine") if calibration.get(k) is not None)))
    result = {"machine": {**machine_info(threads), "dtype_calibration": calibration}, "method": {
        "batch_tokens": cfg.batch_tokens, "repeats": cfg.repeats, "cell_budget_s": cfg.cell_budget_s,
        "docs": {s: DOCS[s][1 if cfg.quick else 0] for s in cfg.sets}, "statistic": "median pass"}}
    gemms = []
    log(f"{threads} threads; GEMM 2048³ timed once per round, next to the passes")
    result["presets"] = {}
    for preset in cfg.presets:
        systems = build_systems(preset, peer_dtypes, cfg.ours_dtype, cfg.seed, onnx=cfg.onnx, threads=threads)
        vocab = EncoderConfig.from_preset(preset).vocab_size  # random ids over the model's vocabulary
        per_set = {}
        for set_name in cfg.sets:
            n_docs = DOCS[set_name][1 if cfg.quick else 0]
            lengths = set_lengths(set_name, n_docs, cfg.seed)
            budget = max(cfg.batch_tokens, max(lengths))
            batches = make_batches(lengths, vocab, budget, cfg.seed)
            runnable = [x for x in systems if x.max_len is None or max(lengths) <= x.max_len]  # else n/a
            if len(set(lengths)) > 1:  # padded peers also get length-sorted batches
                runnable += [dataclasses.replace(x, name=f"{x.name}_sorted", sorted_batches=True)
                             for x in runnable if x.padded]
            cos = cosines(runnable, batches[0])
            load0 = os.getloadavg()[0]
            times, gemm = time_set(runnable, batches, cfg.repeats, cfg.cell_budget_s,
                                   make_batches(lengths, vocab, budget, cfg.seed, by_length=True))
            gemms.append(gemm)
            cells = {}
            load = [round(load0, 2), round(os.getloadavg()[0], 2)]
            for i, s in enumerate(runnable):
                sec = statistics.median(times[i])
                r = {"tokens_per_s": sum(lengths) / sec, "flops_per_s": s.flops(lengths) / sec,
                     "passes": len(times[i]), "seconds": sec, "dtype": str(s.dtype).replace("torch.", ""),
                     "gemm_flops_per_s": gemm, "cosine_to_ours_fp32": cos.get(s.name.removesuffix("_sorted")),
                     "load_avg_1m_start_end": load}
                r["mfu_fp32_gemm"] = r["flops_per_s"] / gemm["fp32"]
                r["mfu_same_dtype_gemm"] = r["flops_per_s"] / gemm["bf16" if s.dtype == torch.bfloat16 else "fp32"]
                key = s.name
                cells[key] = r
                log(f"{preset:13s} {set_name:10s} {key:18s} {r['dtype']:8s} {r['tokens_per_s']:9.0f} tok/s  "
                    f"MFU vs fp32/same-dtype GEMM {r['mfu_fp32_gemm']:.2f}/{r['mfu_same_dtype_gemm']:.2f}  "
                    f"({r['passes']} passes, GEMM fp32 {gemm['fp32'] / 1e9:.0f} bf16 {gemm['bf16'] / 1e9:.0f} GFLOP/s)")
            per_set[set_name] = cells
        result["presets"][preset] = per_set
    result["machine"]["gemm_flops_per_s"] = {k: statistics.median(g[k] for g in gemms) for k in ("fp32", "bf16")}
    result["machine"]["gemm_flops_per_s_range"] = {k: [min(g[k] for g in gemms), max(g[k] for g in gemms)]
                                                   for k in ("fp32", "bf16")}
    set_mfu(result)
    # the shape: sets → tokens_per_s per system (first preset run = mmbert-small when present)
    main = "mmbert-small" if "mmbert-small" in result["presets"] else next(iter(result["presets"]))
    result["sets"] = {s: {"tokens_per_s": {k: v["tokens_per_s"] for k, v in cells.items()}}
                      for s, cells in result["presets"][main].items()}
    result["sets_preset"] = main
    return result


def set_mfu(result: dict) -> None:
    """MFU of every cell against the run's median GEMM: one GEMM sample per round is as noisy as
    the load on a shared machine, and one denominator keeps MFU at 8192 vs 512 a ratio of FLOP/s."""
    g = result["machine"]["gemm_flops_per_s"]
    for sets in result["presets"].values():
        for cells in sets.values():
            for r in cells.values():
                r["mfu_fp32_gemm"] = r["flops_per_s"] / g["fp32"]
                r["mfu_same_dtype_gemm"] = r["flops_per_s"] / g["bf16" if r["dtype"] == "bfloat16" else "fp32"]


def markdown(result: dict) -> str:
    """Per preset: tokens/s per system and set with ratios ours ÷ each peer, then MFU per system."""
    m = result["machine"]
    g = m["gemm_flops_per_s"]
    cal = m.get("dtype_calibration", {})
    cal_line = (f"dtype auto → {cal.get('dtype')} ({cal.get('reason', '')}; {cal.get('source', '')}"
                + (f": fp32 {1e3 * cal['fp32_s']:.1f} ms, bf16 {1e3 * cal['bf16_s']:.1f} ms"
                   + (f", int8 {1e3 * cal['int8_s']:.1f} ms" if cal.get("int8_s") else "") + " per calibration pass"
                   if "fp32_s" in cal else "") + ").")
    lines = [f"Machine: {m.get('cpu_vendor', '?')} {m['cpu']}, flags {' '.join(m.get('cpu_flags', [])) or 'n/a'}, "
             f"{m['cores']} cores ({m['threads']} threads used), AMX-BF16 {m['amx_bf16']}, malloc {m.get('malloc', '?')}, "
             f"torch {m['torch']}, transformers {m['transformers']}, onnxruntime {m.get('onnxruntime')}; {m['date']}; "
             f"load average at start {m['load_avg_1m_at_start']}.", cal_line,
             f"Measured GEMM (2048³, median over all rounds of the run; the MFU denominator): fp32 "
             f"{g['fp32'] / 1e9:.0f} GFLOP/s, bf16 {g['bf16'] / 1e9:.0f} GFLOP/s.", ""]
    for preset, sets in result["presets"].items():
        systems = []
        for cells in sets.values():
            systems += [k for k in cells if k not in systems]
        lines += [f"### {preset}: tokens/s (mmbert ÷ each system in brackets), cosine of mean-pooled embeddings "
                  f"to ours fp32 (min over the first batch's documents)", "",
                  "| system | dtype | " + " | ".join(sets) + " | cosine |", "|---" * (3 + len(sets)) + "|"]
        for k in systems:
            row = [k, _dtype_of(sets, k)]
            for cells in sets.values():
                ours, c = cells.get("mmbert"), cells.get(k)
                row.append("n/a" if c is None else f"{c['tokens_per_s']:.0f}" + (
                    f" ({ours['tokens_per_s'] / c['tokens_per_s']:.2f}×)" if ours and k != "mmbert" else ""))
            cos = [c[k]["cosine_to_ours_fp32"] for c in sets.values() if c.get(k, {}).get("cosine_to_ours_fp32")]
            row.append(f"{min(cos):.6f}" if cos else "–")
            lines.append("| " + " | ".join(row) + " |")
        loads = ", ".join(f"{n} {c0.get('load_avg_1m_start_end', ['?', '?'])[0]}→"
                          f"{c0.get('load_avg_1m_start_end', ['?', '?'])[1]}"
                          for n, c0 in ((n, next(iter(cells.values()))) for n, cells in sets.items()))
        lines += ["", f"Load average (1 min) at the start → end of each set: {loads}."]
        lines += ["", f"### {preset}: MFU (achieved FLOP/s ÷ GEMM FLOP/s of the same dtype; in brackets ÷ fp32 GEMM)",
                  "", "| set | " + " | ".join(systems) + " |", "|---" * (1 + len(systems)) + "|"]
        for set_name, cells in sets.items():
            lines.append("| " + " | ".join([set_name] + [
                f"{cells[k]['mfu_same_dtype_gemm']:.2f} ({cells[k]['mfu_fp32_gemm']:.2f})" if k in cells else "n/a"
                for k in systems]) + " |")
        lines.append("")
    return "\n".join(lines)


def _dtype_of(sets: dict, key: str) -> str:
    for cells in sets.values():
        if key in cells:
            return cells[key]["dtype"]
    return "?"


def write_json(result: dict, path: str | os.PathLike) -> None:
    atomic_write(path, json.dumps(result, indent=2))



def run_and_report(cfg: BenchConfig, json_path: str | os.PathLike | None = None) -> dict:
    """Run, print the markdown tables, and write the JSON when asked (`mmbert bench`)."""
    result = run_benchmark(cfg)
    print()
    print(markdown(result))
    if json_path:
        write_json(result, json_path)
        print(f"wrote {json_path}")
    return result
