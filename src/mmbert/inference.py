"""Fast inference: `embed` (embeddings) and `fill_mask` on the unpadded, variable-length path.

    import mmbert
    from mmbert.inference import embed, fill_mask
    model = mmbert.from_pretrained("path/to/model")          # ours or a transformers ModernBERT dir
    vecs = embed(model, ["a sentence", "another one"])       # [2, hidden] float32, mean-pooled
    fill_mask(model, ["Paris is the <mask> of France."], top_k=3)

    mmbert embed --model DIR --input texts.txt --out vectors.npy
    mmbert fill-mask --model DIR "Paris is the <mask> of France."

How it is fast (benchmarks/efficiency.py measures each lever; results in benchmarks/results/):
- inputs are sorted by length and cut into batches by a token budget, then run *packed*
  (documents back to back with `cu_seqlens`): no FLOP is spent on padding, in the linear layers or
  in attention (model/attention.py "varlen" on CPU, flash-attn's varlen kernel on CUDA);
- the dtype measured to pay: `dtype="auto"` on CPU times fp32, bf16 and int8 on a small
  encoder-shaped workload the first time on a machine (~0.3–0.8 s, `calibrate_dtype`). bf16 where
  it is ≥ 1.15× faster than fp32 with embeddings' cosine ≥ 0.999 (AMX Xeons and AVX512-BF16
  EPYCs; not fp32-only CPUs, where bf16 is emulated); int8 where it is ≥ 1.1× faster than that
  float choice — and then, since int8's error depends on the trained weights, only for a model
  whose int8 embeddings of 16 probe sentences (`PROBE_TEXTS`) keep cosine ≥ 0.9997 to fp32 (0.999
  plus a measured margin, `INT8_PROBE_MIN_COSINE`; `check_int8`, once per model; else the float
  choice). The machine's answer is cached per CPU model and torch version in
  ~/.cache/mmbert/dtype_calibration.json ($MMBERT_CACHE_DIR moves it, $MMBERT_DTYPE=fp32|bf16|int8
  overrides it) and logged ("mmbert" logger; `mmbert --verbose`, `mmbert bench`); bf16 on any CUDA
  GPU; always exact with `dtype="fp32"` (the tested oracle path);
- `dtype="int8"` (CPU; "auto" picks it as above): the layers' linear layers dynamically quantised
  to int8 (`quantize_int8`, torch's fbgemm/oneDNN VNNI kernels), the rest fp32 — 1.2–1.3× bf16 on
  a Zen 4 EPYC with malloc tuned (below);
- glibc malloc tuned so activation buffers are reused rather than mapped and zeroed on every pass
  (`mmbert.allocator.tune_malloc`, called by embed / fill_mask / serve / every command);
- optional `torch.compile` of the MLP blocks (fuses GELU·gate; `compile=True`), applied from
  outside on a private copy so the caller's model is never modified. Off by default: on the 2-core
  Xeon it took 172 s to compile and ran 2.1× slower (benchmarks/results/efficiency_*.md);
- CPU threads from `mmbert.threads.default_threads()` (all usable cores when idle OpenMP threads sleep,
  else the cores other processes leave free; `MMBERT_THREADS` fixes them).
Outputs come back in the caller's order, as float32.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import logging
import os
import time
import warnings
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmbert.allocator import tune_malloc
from mmbert.export.hf import from_pretrained
from mmbert.model import build_model
from mmbert.model.config import EncoderConfig
from mmbert.threads import default_threads
from mmbert.tokenizer import resolve_special_ids
from mmbert.utils import DTYPE_NAMES, atomic_write

log = logging.getLogger("mmbert")

POOLINGS = ("mean", "first", "none")
# inference runs in fp32, bf16 or (opt-in, CPU) int8 — any spelling of utils.DTYPE_NAMES; "auto" is
# resolved per device (resolve_dtype); int8: see `quantize_int8`
DTYPES = {name: {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.qint8}[canon]
          for name, canon in DTYPE_NAMES.items() if canon != "fp16"}


# ----------------------------------------------------------------------------- hardware
def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where that file does not exist."""
    return set((_cpuinfo("flags") or "").split())


def _cpuinfo(field: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9R14 96-Core Processor"), or the platform's best guess."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_vendor() -> str:
    return _cpuinfo("vendor_id") or "unknown"


# flags that decide bf16/int8 speed on x86 (the machine record lists the ones present)
SPEED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


@lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls run on AMX tiles (Sapphire Rapids and later). Kept for the machine
    record only: "auto" no longer trusts flags (AVX512-BF16 on Zen 4 runs the encoder 2.2× faster
    in bf16, issue 15) and measures instead, `calibrate_dtype`."""
    return "amx_bf16" in cpu_flags() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# "auto" on CPU: fp32, bf16 and int8 measured once per (CPU model, torch version), the answer cached.
DTYPE_ENV = "MMBERT_DTYPE"  # fp32 / bf16 / int8: what "auto" means on CPU, without calibrating
CACHE_ENV = "MMBERT_CACHE_DIR"  # folder of the calibration file (default: the user cache dir)
CALIBRATION_FORMAT = 2  # 2: int8 timed too, and the float dtype it falls back to
MIN_COSINE = 0.999  # mean-pooled embeddings' cosine to fp32 that bf16 and int8 must keep (issue 15)
MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this margin: fp32 is exact, and timings on a busy machine jitter
# int8 must beat the float choice by this margin; its accuracy depends on the trained weights, so
# "auto" → int8 is also checked on each model before use (`check_int8`)
MIN_SPEEDUP_INT8 = 1.10
# ... and the bar a model's int8 embeddings of the 16 probe sentences must clear: MIN_COSINE plus a
# margin, because the smallest cosine over 16 short sentences overestimates the smallest over more
# text. Measured on the 45 trained study models (benchmarks/int8_trained.py, results in
# benchmarks/results/int8_trained_epyc-zen4-2c_202611.md): the probe's minimum sat above the
# minimum over 128 SIB-200 sentences in 8 languages by up to 0.00063; with the margin 0.0007 the 24
# models that pass all keep ≥ 0.999 there, and the 3 that fall below 0.999 (0.9987–0.9989) fail.
INT8_PROBE_MIN_COSINE = MIN_COSINE + 0.0007


def cache_dir() -> Path:
    """$MMBERT_CACHE_DIR, else $XDG_CACHE_HOME/mmbert, else ~/.cache/mmbert."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmbert"


def calibration_path() -> Path:
    return cache_dir() / "dtype_calibration.json"


def calibration_key() -> str:
    return f"{cpu_model()} | torch {torch.__version__}"


def decide_dtype(fp32_s: float, bf16_s: float, cosine: float, int8_s: float | None = None,
                 int8_cosine: float | None = None, min_cosine: float = MIN_COSINE,
                 min_speedup: float = MIN_SPEEDUP, min_speedup_int8: float = MIN_SPEEDUP_INT8) -> tuple[str, str]:
    """("bf16" | "fp32" | "int8", why) from the calibration's seconds per pass and the cosines to
    fp32. The float choice first (bf16 only where ≥ `min_speedup` × fp32 and close enough), then
    int8 where it beats that choice by `min_speedup_int8` and stays close (when it was timed)."""
    speedup = fp32_s / bf16_s if bf16_s > 0 else 0.0
    if not cosine >= min_cosine:  # (NaN fails too)
        dtype, why = "fp32", f"bf16 cosine to fp32 {cosine:.5f} < {min_cosine}"
    elif speedup < min_speedup:
        dtype, why = "fp32", f"bf16 only {speedup:.2f}x fp32 (needs ≥ {min_speedup}x)"
    else:
        dtype, why = "bf16", f"bf16 {speedup:.2f}x fp32, cosine {cosine:.5f}"
    if int8_s is None:
        return dtype, why
    base_s = bf16_s if dtype == "bf16" else fp32_s
    gain = base_s / int8_s if int8_s > 0 else 0.0
    if int8_cosine is None or not int8_cosine >= min_cosine:
        return dtype, f"{why}; int8 cosine {int8_cosine} < {min_cosine}"
    if gain < min_speedup_int8:
        return dtype, f"{why}; int8 only {gain:.2f}x {dtype} (needs ≥ {min_speedup_int8}x)"
    return "int8", f"int8 {gain:.2f}x {dtype} ({why}); checked on each model, else {dtype}"


def measure_dtypes(rounds: int = 5, threads: int | None = None) -> dict:
    """Seconds per pass of a small encoder-shaped workload in fp32, bf16 and int8, interleaved (load
    from other processes hits all alike; median of `rounds`), and the mean-pooled embeddings'
    smallest cosine of bf16 and of int8 to fp32 (random weights, which flatter int8: "auto" → int8
    is checked again on each model, `check_int8`). mmbert-small's width and layer mix (hidden 384,
    GeGLU 1152, one global and one local layer), 4 documents of 64–192 tokens, packed: ~0.3–0.8 s
    in all on 2 cores."""
    import statistics

    cfg = EncoderConfig.from_preset("mmbert-small", vocab_size=1024, num_hidden_layers=2, local_attention=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = build_model(cfg, head="none").eval()
        docs = [torch.randint(5, cfg.vocab_size, (n,)).tolist() for n in (192, 150, 100, 64)]
    p = pack(docs, torch.device("cpu"))
    tune_malloc()  # as embed / fill_mask / serve run (int8 depends on it most: mmbert/allocator.py)
    models = {"fp32": enc, "bf16": copy.deepcopy(enc).to(torch.bfloat16)}
    if int8_available():
        models["int8"] = quantize_int8(copy.deepcopy(enc))

    def run(m: nn.Module) -> torch.Tensor:
        h = m(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state.float()
        return torch.stack([h[int(p.cu_seqlens[i]):int(p.cu_seqlens[i + 1])].mean(0) for i in range(len(docs))])

    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode(), _threads(threads if threads is not None else default_threads()):
        out = {k: run(m) for k, m in models.items()}  # warm-up, and the outputs compared
        for _ in range(rounds):
            for k, m in models.items():
                t = time.perf_counter()
                run(m)
                times[k].append(time.perf_counter() - t)
        used = torch.get_num_threads()
    cos = {k: float(F.cosine_similarity(out[k].double(), out["fp32"].double()).min()) for k in models if k != "fp32"}
    return {"fp32_s": statistics.median(times["fp32"]), "bf16_s": statistics.median(times["bf16"]),
            "cosine": cos["bf16"], "int8_s": statistics.median(times["int8"]) if "int8" in times else None,
            "int8_cosine": cos.get("int8"), "threads": used, "rounds": rounds, "tokens": int(p.input_ids.numel())}


def read_calibration(path: Path | None = None) -> dict:
    """The cache file's entries {key: record}; {} when absent, unreadable or of another format."""
    try:
        data = json.loads((path or calibration_path()).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def calibrate_dtype(force: bool = False, measure: Callable[[], dict] | None = None) -> dict:
    """What "auto" means on this CPU: the cached record, or a fresh measurement (then cached).
    {"dtype", "fallback" (the float dtype used where int8 fails a model's check), "reason",
    "source": "env" | "cache" | "measured", and for measurements "fp32_s", "bf16_s", "int8_s",
    "speedup", "cosine", "int8_cosine", "threads", "load_avg_1m", "date"}. `measure` stands in for
    `measure_dtypes` (tests inject timings)."""
    forced = os.environ.get(DTYPE_ENV)
    if forced:
        if forced not in ("fp32", "bf16", "int8"):
            raise ValueError(f"{DTYPE_ENV}={forced!r} is not a CPU dtype; set it to fp32, bf16 or int8, or unset "
                             f"it to let mmbert measure")
        return {"dtype": forced, "fallback": forced, "reason": f"set by ${DTYPE_ENV}", "source": "env"}
    key, path = calibration_key(), calibration_path()
    entries = read_calibration(path)
    hit = entries.get(key)
    if not force and isinstance(hit, dict) and hit.get("dtype") in ("fp32", "bf16", "int8") \
            and hit.get("fallback") in ("fp32", "bf16"):
        return {**hit, "source": "cache", "path": str(path)}
    m = (measure or measure_dtypes)()
    dtype, reason = decide_dtype(m["fp32_s"], m["bf16_s"], m["cosine"], m.get("int8_s"), m.get("int8_cosine"))
    fallback = decide_dtype(m["fp32_s"], m["bf16_s"], m["cosine"])[0]
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - no load average on this platform
        load = None
    rec = {"dtype": dtype, "fallback": fallback, "reason": reason, **m,
           "speedup": m["fp32_s"] / m["bf16_s"] if m["bf16_s"] > 0 else 0.0, "load_avg_1m": load,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    entries[key] = rec
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"format": CALIBRATION_FORMAT, "entries": entries}, indent=2) + "\n")
    except OSError as e:  # a read-only home still gets the measured answer, only not cached
        log.warning("could not cache the dtype calibration in %s (%s); set $%s to a writable folder",
                    path, e, CACHE_ENV)
    int8 = f", int8 {1e3 * m['int8_s']:.1f} ms" if m.get("int8_s") else ""
    log.info("dtype auto → %s on %s: fp32 %.1f ms, bf16 %.1f ms%s per pass (%s); cached in %s",
             dtype, key, 1e3 * m["fp32_s"], 1e3 * m["bf16_s"], int8, reason, path)
    return {**rec, "source": "measured", "path": str(path)}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, model: nn.Module | None = None,
                  probe: Callable[[], Sequence[Sequence[int]]] | None = None) -> torch.dtype:
    """"auto" → bf16 on CUDA (with bf16 support); on CPU what `calibrate_dtype` measured: bf16
    where it is ≥ 1.15× faster than fp32 and keeps cosine ≥ 0.999, int8 where it is ≥ 1.1× faster
    than that and `check_int8` on `model` with the token-id lists `probe()` returns (see
    `int8_probe`) clears INT8_PROBE_MIN_COSINE (without a model "auto" never means int8), else
    float32. Explicit dtypes are returned as asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: auto, fp32, bf16, int8")
    if DTYPES[dtype] is torch.qint8 and device.type != "cpu":
        raise ValueError(f"dtype int8 runs on CPU only (dynamic quantisation through torch's x86 kernels), "
                         f"not on {device.type}; use dtype='auto' or 'bf16' there")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return torch.float32
    if model is not None and is_int8(model):  # already quantised: nothing else it can run as
        return torch.qint8
    rec = calibrate_dtype()
    if rec["source"] != "measured":
        log.info("dtype auto → %s (%s; from %s)", rec["dtype"], rec["reason"], rec.get("path", rec["source"]))
    if rec["dtype"] != "int8" or rec["source"] == "env":
        return DTYPES[rec["dtype"]]
    fallback = DTYPES[rec["fallback"]]
    inputs = probe() if probe is not None and model is not None else None
    if not inputs:
        return fallback
    cosine, bar = check_int8(model, inputs), INT8_PROBE_MIN_COSINE
    if cosine >= bar:
        log.info("dtype auto → int8 on this model: probe embeddings' cosine to fp32 %.5f ≥ %.4f", cosine, bar)
        return torch.qint8
    log.info("dtype auto → %s on this model: int8's probe cosine to fp32 is %.5f < %.4f", rec["fallback"], cosine, bar)
    return fallback


# Probe sentences for `check_int8` when the model has a tokenizer: the same meaning-free everyday
# sentences in 16 languages and 12 scripts (written for this check), so quantisation error is
# measured on trained-distribution inputs (random token ids flatter int8: 0.99987 vs 0.9997 on
# the study's models).
PROBE_TEXTS = (
    "The river rose after three days of rain, and the old bridge was closed to traffic.",
    "Die Bibliothek bleibt am Sonntag geschlossen, öffnet aber am Montag früher als sonst.",
    "Elle a appris à jouer du violon pendant les longues soirées d'hiver à la campagne.",
    "El mercado del pueblo vende pan fresco, queso y frutas de temporada cada mañana.",
    "Вчера вечером мы долго гуляли по набережной и говорили о новых книгах.",
    "这个城市的地铁系统每天运送数百万名乘客，早高峰时非常拥挤。",
    "週末は家族と一緒に山へ行き、きれいな湖の写真をたくさん撮りました。",
    "افتتحت المدرسة الجديدة أبوابها هذا الأسبوع وسط فرحة كبيرة من الأهالي.",
    "बारिश के मौसम में गाँव के खेत हरे-भरे हो जाते हैं और किसान खुश रहते हैं।",
    "Wanafunzi walisoma kwa bidii kabla ya mtihani wa mwisho wa mwaka.",
    "Sabah erkenden kalkıp limana gittik ve balıkçıların dönüşünü izledik.",
    "우리는 주말마다 공원에서 자전거를 타고 점심을 함께 먹습니다.",
    "Pemerintah kota berencana membangun taman baru di dekat stasiun kereta.",
    "Mùa thu ở Hà Nội có những buổi sáng se lạnh và mùi hoa sữa thơm nồng.",
    "Το καλοκαίρι πηγαίνουμε συχνά στο νησί για να δούμε τους παππούδες μας.",
    "ในฤดูฝน ถนนในเมืองมักมีน้ำท่วมขังหลังฝนตกหนัก",
)


def int8_probe(tokenizer: Any, ids: Sequence[Sequence[int]], max_tokens: int = 128) -> list[list[int]]:
    """What `check_int8` runs: PROBE_TEXTS through the model's tokenizer, or without one the first
    16 of the caller's inputs; each cut to `max_tokens`."""
    probe = tokenize(tokenizer, PROBE_TEXTS) if tokenizer is not None else list(ids[:16])
    return [list(x[:max_tokens]) for x in probe if len(x)]


def check_int8(model: nn.Module, probe: Sequence[Sequence[int]]) -> float:
    """The smallest cosine between int8 and fp32 mean-pooled embeddings of `probe` (token-id
    lists) on this model's encoder; measured once per model and weights version, and kept beside
    the model's prepared copies — the int8 copy it quantises is the one `prepare` then hands out."""
    cache, version = _PREPARED.setdefault(model, {}), _weights_version(model)
    hit = cache.get("int8 check")
    if hit is not None and hit[0] == version:
        return hit[1]
    p = pack(probe, torch.device("cpu"))
    cu = p.cu_seqlens.tolist()

    def pooled(m: nn.Module) -> torch.Tensor:
        h = m(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state.double()
        return torch.stack([h[a:b].mean(0) for a, b in zip(cu[:-1], cu[1:])])

    int8, fp32 = (_bare_encoder(prepare(model, dt)) for dt in (torch.qint8, torch.float32))
    with torch.inference_mode():
        cosine = float(F.cosine_similarity(pooled(int8), pooled(fp32)).min())
    cache["int8 check"] = (version, cosine)
    return cosine


# ----------------------------------------------------------------------------- model preparation
# A cast / compiled copy per (model, dtype, compile), rebuilt when the model's weights change
# (parameter version counters move on every in-place update, e.g. an optimizer step); also the
# model's `check_int8` result, under "int8 check".
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _weights_version(model: nn.Module) -> tuple:
    # inference tensors (made under torch.inference_mode) keep no version counter
    return tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in model.parameters())


def prepare(model: nn.Module, dtype: torch.dtype, compile: bool = False) -> nn.Module:
    """The model in eval mode and `dtype`, MLPs compiled when asked; the caller's model is returned
    as is when nothing needs changing, otherwise a cached copy."""
    current = torch.qint8 if is_int8(model) else next(model.parameters()).dtype
    if current == dtype and not compile and not model.training:
        return model
    if current == torch.qint8:
        raise ValueError(f"this model is already quantised to int8 (`quantize_int8`) and cannot be made {dtype}; "
                         f"prepare the original fp32 model instead")
    cache = _PREPARED.setdefault(model, {})
    key, version = (dtype, compile), _weights_version(model)
    hit = cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    if dtype is torch.qint8:
        prepared = quantize_int8(copy.deepcopy(model).float().eval())
    else:
        prepared = copy.deepcopy(model).to(dtype).eval()
    if compile:
        for layer in _bare_encoder(prepared).layers:
            layer.mlp.compile(dynamic=True)
    cache[key] = (version, prepared)
    return prepared


class _SplitGeGLU(nn.Module):
    """The GeGLU MLP with Wi as two Linear modules (input half, gate half), so that module-swapping
    quantisation reaches both halves (MLP.forward reads Wi's weight slices directly). Same maths."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        half, wi = mlp.Wi.out_features // 2, mlp.Wi

        def linear(rows: slice) -> nn.Linear:
            lin = nn.Linear(wi.in_features, half, bias=wi.bias is not None)
            lin.weight = nn.Parameter(wi.weight[rows].detach().clone())
            if wi.bias is not None:
                lin.bias = nn.Parameter(wi.bias[rows].detach().clone())
            return lin

        self.Wi_in, self.Wi_gate = linear(slice(None, half)), linear(slice(half, None))
        self.Wo, self.act, self.drop = mlp.Wo, mlp.act, mlp.drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Wo(self.drop(self.act(self.Wi_in(x)) * self.Wi_gate(x)))


def int8_available() -> bool:
    """Whether this torch build has the x86/fbgemm quantised kernels `quantize_int8` needs."""
    return bool({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines))


def is_int8(model: nn.Module) -> bool:
    """Whether `quantize_int8` has been applied to this model (or the model holding it)."""
    return any(isinstance(m, _SplitGeGLU) for m in model.modules())


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` (fp32, eval; modified in place and returned) with the encoder layers' linear layers
    (Wqkv, attention Wo, both GeGLU halves, MLP Wo) replaced by dynamically quantised int8 ones:
    int8 weights per output channel, activations quantised per batch on the fly, int32
    accumulation, fp32 out (`torch.ao.quantization.quantize_dynamic`, x86 engine = fbgemm/oneDNN
    VNNI kernels). Embeddings, norms, RoPE, attention and heads stay fp32. On the 2-core Zen 4
    EPYC it runs 1.25–1.3× bf16 with malloc tuned (benchmarks/results/efficiency_epyc-zen4-2c_202611.md).
    torch marks this eager quantisation API deprecated in favour of torchao; it still ships in
    torch 2.13."""
    if not int8_available():
        raise ValueError(f"dtype int8 needs torch's x86/fbgemm quantised kernels, which this torch build lacks "
                         f"(engines: {torch.backends.quantized.supported_engines}); use dtype 'auto' or 'bf16'")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    enc = _bare_encoder(model)
    for layer in enc.layers:
        layer.mlp = _SplitGeGLU(layer.mlp)
    qconfig = per_channel_dynamic_qconfig if torch.backends.quantized.engine in ("x86", "fbgemm") \
        else default_dynamic_qconfig
    with warnings.catch_warnings():  # the deprecation notice, once per conversion, says nothing to the user
        warnings.simplefilter("ignore")
        quantize_dynamic(enc.layers, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    return model


def _bare_encoder(model: nn.Module) -> nn.Module:
    """The Encoder inside any of our model classes (MaskedLM.model, …) or the model itself."""
    enc = getattr(model, "model", model)
    if not hasattr(enc, "layers") or not hasattr(enc, "embeddings"):
        raise ValueError(f"{type(model).__name__} is not an mmbert model; load one with "
                         f"mmbert.from_pretrained(path)")
    return enc


def _load(model: Any, head: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    return from_pretrained(model, head=head)


# ----------------------------------------------------------------------------- tokens and batches
def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with special tokens, from a `tokenizers.Tokenizer`, our tokenizer wrapper or a
    transformers tokenizer."""
    if tokenizer is None:
        raise ValueError("texts need a tokenizer: pass tokenizer=…, load a model directory that has "
                         "tokenizer files, or pass token-id lists instead of strings")
    if hasattr(tokenizer, "encode_batch"):
        out = tokenizer.encode_batch(list(texts))
        return [list(e.ids) if hasattr(e, "ids") else list(e) for e in out]
    if callable(tokenizer):  # transformers
        return [list(x) for x in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    raise ValueError(f"unsupported tokenizer type {type(tokenizer).__name__}; use a tokenizers.Tokenizer "
                     f"or a transformers tokenizer")


def _as_token_lists(inputs, tokenizer) -> list[list[int]]:
    if isinstance(inputs, (str, torch.Tensor)) and not (isinstance(inputs, torch.Tensor) and inputs.dim() == 2):
        raise ValueError("embed takes a list of texts or of token-id lists, not a single "
                         f"{type(inputs).__name__}; wrap it in a list")
    items = list(inputs)
    if not items:
        return []
    if all(isinstance(x, str) for x in items):
        return tokenize(tokenizer, items)
    if any(isinstance(x, str) for x in items):
        raise ValueError("inputs mix texts and token-id lists; pass one kind")
    return [x.tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x] for x in items]


def _truncate(ids: list[list[int]], max_length: int, truncate: str, sep_id: int | None) -> list[list[int]]:
    if truncate not in ("warn", "error"):
        raise ValueError(f"truncate must be 'warn' or 'error', got {truncate!r}")
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if not long:
        return ids
    if truncate == "error":
        i = long[0]
        raise ValueError(f"input {i} has {len(ids[i])} tokens, more than max_length={max_length} "
                         f"({len(long)} inputs are too long); shorten them, raise max_length (≤ the model's "
                         f"max_position_embeddings) or pass truncate='warn'")
    warnings.warn(f"{len(long)} input(s) longer than max_length={max_length} tokens were truncated "
                  f"(the first is input {long[0]} with {len(ids[long[0]])} tokens)", stacklevel=3)
    out = list(ids)
    for i in long:  # keep the closing separator, as tokenizers' own truncation does
        x = ids[i]
        out[i] = x[:max_length - 1] + [x[-1]] if sep_id is not None and x[-1] == sep_id else x[:max_length]
    return out


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first) and cut greedily so each batch holds at most
    `batch_tokens` tokens (a longer single input gets a batch of its own). Similar lengths share a
    batch, which keeps the attention buckets tight."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be ≥ 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, used = [], [], 0
    for i in order:
        if cur and used + lengths[i] > batch_tokens:
            batches.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        batches.append(cur)
    return batches


@dataclass
class _Packed:
    input_ids: torch.Tensor  # [N]
    cu_seqlens: torch.Tensor  # [D+1] int32
    max_seqlen: int


def pack(seqs: Sequence[Sequence[int]], device: torch.device) -> _Packed:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return _Packed(flat.to(device), cu.to(device), int(lengths.max()))


class _threads:
    """Set torch's intra-op threads for a block and restore them after."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None and self.n != self.old:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)


# ----------------------------------------------------------------------------- public API
def embed(model: nn.Module | str, inputs: Sequence[str] | Sequence[Sequence[int]], tokenizer: Any = None, *,
           pooling: str = "mean", batch_tokens: int = 16384, max_length: int | None = None,
           truncate: str = "warn", dtype: str | torch.dtype = "auto", compile: bool = False,
           threads: int | None = None, progress: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Hidden states for texts or token-id lists, in the input order.

    pooling "mean" (over each input's tokens) or "first" (the CLS token) → float32 tensor
    [n, hidden]; "none" → a list of [len_i, hidden] float32 tensors. Inputs longer than
    `max_length` (default: the model's max_position_embeddings) are cut with a warning, or raise a
    ValueError with `truncate="error"`. `dtype` "auto" uses bf16 where it is fast (see module
    docstring), "fp32" is exact, "int8" quantises the layers' linear weights (`quantize_int8`; CPU, opt-in:
    check its cosine on your model). Any of our model classes works (their encoder is used).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    model = _load(model, head="none")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    config = model.config
    ids = _as_token_lists(inputs, tokenizer)
    hidden_size = config.hidden_size
    if not ids:
        return [] if pooling == "none" else torch.empty(0, hidden_size)
    if any(len(x) == 0 for x in ids):
        i = next(i for i, x in enumerate(ids) if len(x) == 0)
        raise ValueError(f"input {i} has no tokens; drop empty inputs before encoding")
    max_length = max_length or config.max_position_embeddings
    ids = _truncate(ids, max_length, truncate, config.sep_token_id)

    encoder = _bare_encoder(model)
    device = next(encoder.parameters()).device
    tune_malloc()
    encoder = prepare(encoder, resolve_dtype(dtype, device, encoder, lambda: int8_probe(tokenizer, ids)), compile)
    results: list[torch.Tensor | None] = [None] * len(ids)
    batches = plan_batches([len(x) for x in ids], batch_tokens)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="embed", unit="batch")
    with torch.inference_mode(), _threads(threads if threads is not None else
                                          (default_threads() if device.type == "cpu" else None)):
        for batch in batches:
            p = pack([ids[i] for i in batch], device)
            hidden = encoder(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state
            for j, i in enumerate(batch):
                h = hidden[int(p.cu_seqlens[j]):int(p.cu_seqlens[j + 1])]
                if pooling == "mean":
                    h = h.float().mean(0)
                elif pooling == "first":
                    h = h[0]
                results[i] = h.float().cpu()
    return results if pooling == "none" else torch.stack(results)


def fill_mask(model: nn.Module | str, texts: Sequence[str], tokenizer: Any = None, top_k: int = 5, *,
              batch_tokens: int = 16384, max_length: int | None = None, truncate: str = "warn",
              dtype: str | torch.dtype = "auto", threads: int | None = None) -> list[list[list[dict]]]:
    """Top-k predictions for every mask token: result[text][mask_position] = [{"token", "token_id",
    "score"}, …] sorted by score (softmax probability). The model needs its MLM head."""
    model = _load(model, head="mlm")
    if getattr(model, "head_type", None) != "mlm":
        raise ValueError(f"fill_mask needs a masked-LM model, got head {getattr(model, 'head_type', '?')!r}; "
                         f"load it with mmbert.from_pretrained(path, head='mlm')")
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if isinstance(texts, str):
        texts = [texts]
    ids = _as_token_lists(texts, tokenizer)
    if not ids:
        return []
    config = model.config

    special = resolve_special_ids(config, tokenizer, require=("mask",))
    mask_id = special.mask
    for i, x in enumerate(ids):
        if mask_id not in x:
            raise ValueError(f"text {i} has no mask token (id {mask_id}, {_token_str(tokenizer, mask_id)!r}); "
                             f"put one where the prediction should go")
    ids = _truncate(ids, max_length or config.max_position_embeddings, truncate, special.sep)
    device = next(model.parameters()).device
    tune_malloc()
    model = prepare(model, resolve_dtype(dtype, device, model, lambda: int8_probe(tokenizer, ids)))
    encoder = _bare_encoder(model)
    top_k = min(top_k, config.vocab_size)
    results: list[list[list[dict]]] = [[] for _ in ids]
    with torch.inference_mode(), _threads(threads if threads is not None else
                                          (default_threads() if device.type == "cpu" else None)):
        for batch in plan_batches([len(x) for x in ids], batch_tokens):
            p = pack([ids[i] for i in batch], device)
            hidden = encoder(p.input_ids, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen).last_hidden_state
            where = (p.input_ids == mask_id).nonzero().squeeze(1)  # decode only the masked positions
            probs = model.decoder(model.head(hidden[where])).float().softmax(-1)
            scores, top = probs.topk(top_k, dim=-1)
            doc = torch.searchsorted(p.cu_seqlens.long(), where, right=True) - 1
            for d, s_row, t_row in zip(doc.tolist(), scores.tolist(), top.tolist()):
                results[batch[d]].append([{"token": _token_str(tokenizer, t), "token_id": t, "score": s}
                                          for s, t in zip(s_row, t_row)])
    return results


def _token_str(tokenizer: Any, token_id: int) -> str | None:
    if tokenizer is None:
        return None
    tokenizer = getattr(tokenizer, "hf", tokenizer)  # our wrapper holds a tokenizers.Tokenizer
    if hasattr(tokenizer, "id_to_token"):
        return tokenizer.id_to_token(token_id)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return tokenizer.convert_ids_to_tokens(token_id)
    return tokenizer.decode([token_id])


def embed_file(model: nn.Module | str, input_path: str | os.PathLike, out_path: str | os.PathLike, *,
               pooling: str = "mean", **embed_kwargs) -> int:
    """Embed a text file (one text per line) into `out_path`: `.npy` (float32 [n, hidden]) or `.jsonl`
    (one vector per line). Row i is line i+1, so a blank line is an error naming it (nothing is
    written). Written atomically; returns n."""
    from pathlib import Path

    import numpy as np

    src, out = Path(input_path), Path(out_path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such input file (expected one text per line)")
    if out.suffix not in (".npy", ".jsonl"):
        raise ValueError(f"{out}: unsupported output type {out.suffix!r}; use a .npy or .jsonl file name")
    if out.is_dir():  # checked before computing anything
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / ('embeddings' + out.suffix)}")
    if out.parent.exists() and not out.parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {out.parent} is a file, not a directory; choose another path")
    if pooling == "none":
        raise ValueError("embed writes one vector per text; use pooling 'mean' or 'first'")
    texts = src.read_text(encoding="utf-8").splitlines()
    blank = [i + 1 for i, line in enumerate(texts) if not line.strip()]
    if blank:
        more = f" (and {len(blank) - 1} more: {', '.join(map(str, blank[1:6]))}{' …' if len(blank) > 6 else ''})"
        raise ValueError(f"{src}:{blank[0]}: blank line{more if len(blank) > 1 else ''}; every line becomes one "
                         f"output row, so remove blank lines first (e.g. grep -v '^[[:space:]]*$')")
    vecs = embed(model, texts, pooling=pooling, progress=True, **embed_kwargs).numpy()
    if out.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, vecs)
        atomic_write(out, buf.getvalue())
    else:
        import json

        atomic_write(out, "".join(json.dumps([round(float(x), 6) for x in v]) + "\n" for v in vecs))
    return len(texts)
