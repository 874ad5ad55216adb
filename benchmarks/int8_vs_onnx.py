"""Our default path and our opt-in int8 path against ONNX Runtime fp32/int8 on length-sorted padded
batches (the issue-15 ratios), interleaved with bench.time_set; a cut-down `mmbert bench` that
times only these systems (a full bench under heavy load does not finish in time).

    python benchmarks/int8_vs_onnx.py 5 150     # repeats, per-system budget (s)
"""
import dataclasses, os, statistics, sys, torch
from mmbert import EncoderConfig
from mmbert.apps.bench import build_systems, set_lengths, make_batches, time_set, cosines
torch.set_num_threads(1)
systems = build_systems("mmbert-small", [torch.float32], "auto", 0, onnx=True, threads=1)
keep = [s for s in systems if s.name in ("mmbert", "mmbert_int8", "onnxrt", "onnxrt_int8")]
cfg = EncoderConfig.from_preset("mmbert-small")
lengths = set_lengths("normal256", 16, 0)
batches = make_batches(lengths, cfg.vocab_size, 2048, 0)
sorted_b = make_batches(lengths, cfg.vocab_size, 2048, 0, by_length=True)
run = [s for s in keep if s.name.startswith("mmbert")] + [dataclasses.replace(s, name=s.name + "_sorted", sorted_batches=True) for s in keep if s.padded]
cos = cosines(run, batches[0])
l0 = os.getloadavg()[0]
times, _ = time_set(run, batches, int(sys.argv[1]), float(sys.argv[2]), sorted_b)
print(f"load {l0:.1f} -> {os.getloadavg()[0]:.1f}; {sum(lengths)} tokens, 16 docs N(256,64), batches <= 2048, 1 thread")
tps = {s.name: sum(lengths) / statistics.median(times[i]) for i, s in enumerate(run)}
print("| system | tokens/s | passes | mmbert (default) ÷ system | mmbert_int8 ÷ system | cosine to ours fp32 |\n|---|---:|---:|---:|---:|---:|")
for i, s in enumerate(run):
    c = cos.get(s.name.removesuffix("_sorted"))
    print(f"| {s.name} | {tps[s.name]:.0f} | {len(times[i])} | {tps['mmbert']/tps[s.name]:.2f}x | {tps['mmbert_int8']/tps[s.name]:.2f}x | {'' if c is None else f'{c:.6f}'} |")
