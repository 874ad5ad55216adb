"""Load benchmark of `mmbert serve`: requests/s and p50/p99 latency at concurrency 1, 8 and 32,
against `mmbert.inference.embed` called once per request in a loop and once on everything
(offline throughput, the ceiling), on the same model and the same requests.

    python benchmarks/serve.py                              # mmbert-small (random init), 128 requests
    python benchmarks/serve.py --model out/merged --requests 256 --inputs-per-request 4
    python benchmarks/serve.py --help

Requests carry token ids (normal lengths around --mean-tokens, like `mmbert bench`'s normal256
set) so every system sees identical inputs; they go to /v1/embeddings with base64 encoding (what
the official openai client asks for by default), from `concurrency` closed-loop asyncio clients on
keep-alive httpx connections. The server runs as a separate process (`python -m mmbert serve`), so client and server
share the machine's cores — as they would behind a local load balancer.

infinity-emb is compared only where it installs without changing our pins; `--infinity` tries.
Prints a markdown table and the machine; copy it into benchmarks/results/serve_<machine>_<yyyymm>.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_proc import start_serve  # noqa: E402  (tests/serve_proc.py: the serve tests' start-up loop)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def make_requests(n: int, per_request: int, mean_tokens: int, vocab: int, seed: int) -> list[list[list[int]]]:
    g = random.Random(seed)
    reqs = []
    for _ in range(n):
        docs = []
        for _ in range(per_request):
            length = min(4 * mean_tokens, max(8, round(g.gauss(mean_tokens, mean_tokens / 4))))
            docs.append([2] + [g.randrange(5, vocab) for _ in range(length - 2)] + [1])
        reqs.append(docs)
    return reqs


def start_server(model_dir: Path, args) -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkdtemp()) / "server.log"
    cmd = ["--model", str(model_dir), "--dtype", args.dtype, "--max-batch-tokens", str(args.batch_tokens),
           "--max-inputs", str(max(512, args.inputs_per_request))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc, url = start_serve(cmd, log, timeout=300)
    return proc, url, log


def load_test(url: str, reqs: list, concurrency: int, hidden: int) -> dict:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered
    (closed loop), as asyncio tasks in one thread so the load generator itself stays light."""
    import asyncio

    import httpx

    latencies: list[float] = []
    nxt = iter(range(len(reqs)))
    errors = []

    async def client_loop(client):
        for i in nxt:
            t0 = time.perf_counter()
            r = await client.post(url + "/v1/embeddings", json={"input": reqs[i], "encoding_format": "base64"})
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errors.append(r.text[:200])
                continue
            v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
            assert v.shape == (hidden,)
            latencies.append(dt)

    async def run():
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return {"wall": wall, "latencies": latencies}


def metric(url: str, name: str) -> int:
    import httpx

    return int(re.search(rf"^mmbert_{name} (\d+)$", httpx.get(url + "/metrics").text, re.M).group(1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: a random-init --preset model)")
    ap.add_argument("--preset", default="mmbert-small", help="preset of the random-init model")
    ap.add_argument("--vocab-size", type=int, default=32768, help="vocabulary of the random-init model")
    ap.add_argument("--requests", type=int, default=128, help="requests per measurement")
    ap.add_argument("--inputs-per-request", type=int, default=1, help="texts (token-id lists) per request")
    ap.add_argument("--mean-tokens", type=int, default=128, help="mean tokens per input (normal, sd mean/4)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client threads")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="embed's and the server's token budget")
    ap.add_argument("--dtype", default="auto", help="auto, fp32/float32, bf16/bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for embed and the server")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import mmbert
    from mmbert.export.hf import save_pretrained
    from mmbert.inference import cpu_model, embed, resolve_dtype
    from mmbert.model import EncoderConfig, build_model

    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory()
        torch.manual_seed(args.seed)
        cfg = EncoderConfig.from_preset(args.preset, vocab_size=args.vocab_size)
        save_pretrained(build_model(cfg, head="none"), tmp.name)
        model_dir = Path(tmp.name)
    else:
        model_dir = Path(args.model)
    model = mmbert.from_pretrained(model_dir, head="none")
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    reqs = make_requests(args.requests, args.inputs_per_request, args.mean_tokens, vocab, args.seed)
    tokens = sum(len(d) for r in reqs for d in r)
    dtype = args.dtype.replace("float32", "fp32").replace("bfloat16", "bf16")
    kw = dict(dtype=dtype, batch_tokens=args.batch_tokens, threads=args.threads)
    embed(model, reqs[0], **kw)  # warm-up (and the bf16 copy, when bf16)
    rows = []

    t0 = time.perf_counter()
    embed(model, [d for r in reqs for d in r], **kw)
    offline = time.perf_counter() - t0
    rows.append(("embed, all requests in one call (offline)", "-", len(reqs) / offline, tokens / offline, None, None))

    lat = []
    t0 = time.perf_counter()
    for r in reqs:
        t1 = time.perf_counter()
        embed(model, r, **kw)
        lat.append(time.perf_counter() - t1)
    loop = time.perf_counter() - t0
    rows.append(("embed, one call per request (loop)", 1, len(reqs) / loop, tokens / loop,
                 percentile(lat, 50), percentile(lat, 99)))
    del model

    proc, url, log = start_server(model_dir, args)
    try:
        load_test(url, reqs[:4], 1, hidden)  # warm-up
        for c in args.concurrency:
            b0 = metric(url, "batches_total")
            res = load_test(url, reqs, c, hidden)
            batches = metric(url, "batches_total") - b0
            rows.append((f"mmbert serve, {batches} forward batches", c, len(reqs) / res["wall"], tokens / res["wall"],
                         percentile(res["latencies"], 50), percentile(res["latencies"], 99)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if tmp is not None:
        tmp.cleanup()

    try:
        import infinity_emb  # noqa: F401
        infinity = "installed, but not wired into this script yet"
    except ImportError:
        infinity = ("not run: infinity-emb 0.0.78 does not install alongside our pins (pip --dry-run: it would "
                    "downgrade transformers 5.3.0→4.57.6, sentence-transformers 5.3.0→3.4.1, numpy→1.26.4, "
                    "huggingface_hub→0.36.2)")
    cores = len(os.sched_getaffinity(0))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## mmbert serve vs embed — {cpu_model()}, {cores} cores, {now}\n")
    print(f"model: {model_dir if args.model else args.preset + ' (random init)'}, hidden {hidden}, "
          f"dtype {dtype} → {str(resolve_dtype(dtype, torch.device('cpu'))).replace('torch.', '')}; "
          f"{len(reqs)} requests × {args.inputs_per_request} inputs, {tokens:,} tokens (mean {args.mean_tokens}); "
          f"token budget {args.batch_tokens}; threads {args.threads or 'default'}; torch {torch.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f}\n")
    print("| system | concurrency | requests/s | tokens/s | p50 latency (ms) | p99 latency (ms) | vs offline embed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c, rps, tps, p50, p99 in rows:
        ms = lambda x: "-" if x is None else f"{1000 * x:.0f}"  # noqa: E731
        print(f"| {name} | {c} | {rps:.1f} | {tps:,.0f} | {ms(p50)} | {ms(p99)} | {rps / rows[0][2]:.0%} |")
    print(f"\ninfinity-emb: {infinity}")


if __name__ == "__main__":
    main()
