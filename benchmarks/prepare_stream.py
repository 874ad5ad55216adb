"""`mmbert data prepare` on a synthetic large language: peak memory per process stays flat as the
language grows, a single huge one-line document costs little, and throughput with --workers.

    .venv/bin/python benchmarks/prepare_stream.py --mb 300 --workers 1 2 --out benchmarks/results/x.md

Makes a corpus in a temporary folder: one language of `--mb` MB of text in 8 MB .jsonl files
(random words from a Zipf-like list, documents of 50–5,000 words), a second language holding one
`--doc-mb` MB single-line document, and a 4k-vocabulary tokenizer trained on a sample. Each
configuration runs `prepare_shards` in a fresh subprocess, whose process tree (the pool workers
included) is sampled every 0.1 s for resident memory (VmRSS): reported are the largest single
process and the largest sum over the tree. "whole doc" runs the huge document with cutting off
(piece_chars = ∞, i.e. how the previous implementation tokenized it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def make_corpus(root: Path, mb: int, doc_mb: int, args_file_mb: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ten", "sa", "ru", "bel", "do", "ni", "vo", "que", "zu", "ar", "est", "in"]
    words = ["".join(rng.choice(syll, size=int(rng.integers(1, 4)))) for _ in range(20000)]
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    p /= p.sum()
    lang = root / "deu_Latn"
    lang.mkdir(parents=True)
    target, written, k = mb << 20, 0, 0
    while written < target:
        with open(lang / f"part-{k:04d}.jsonl", "w", encoding="utf-8") as f:
            fw = 0
            while fw < args_file_mb << 20 and written + fw < target:
                doc = " ".join(rng.choice(words, size=int(rng.integers(50, 5000)), p=p))
                line = json.dumps({"text": doc}) + "\n"
                f.write(line)
                fw += len(line)
        written += fw
        k += 1
    big = root / "fra_Latn"
    big.mkdir()
    chunk = " ".join(rng.choice(words, size=200_000, p=p))
    n = max(1, (doc_mb << 20) // len(chunk))
    (big / "one.jsonl").write_text(json.dumps({"text": " ".join([chunk] * n)}) + "\n", encoding="utf-8")
    # and a small language so fra_Latn's single document is not alone in a run
    (root / "ita_Latn").mkdir()
    (root / "ita_Latn" / "a.jsonl").write_text("".join(json.dumps({"text": f"documento {i} " * 20}) + "\n"
                                                       for i in range(50)))


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """(largest single process, sum) of VmRSS over pid and its descendants, in kB."""
    kids = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                st = (d / "stat").read_text()
                kids.setdefault(int(st.rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except OSError:
                pass
    todo, rss = [pid], []
    while todo:
        q = todo.pop()
        todo += kids.get(q, [])
        try:
            for ln in Path(f"/proc/{q}/status").read_text().splitlines():
                if ln.startswith("VmRSS:"):
                    rss.append(int(ln.split()[1]))
        except OSError:
            pass
    return (max(rss), sum(rss)) if rss else (0, 0)


def run_code(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    peak_one = peak_sum = 0
    while p.poll() is None:
        one, tot = tree_rss_kb(p.pid)
        peak_one, peak_sum = max(peak_one, one), max(peak_sum, tot)
        time.sleep(0.1)
    if p.returncode:
        raise SystemExit(f"benchmark subprocess failed ({p.returncode})")
    return {"s": time.perf_counter() - t0, "one_mb": peak_one / 1024, "sum_mb": peak_sum / 1024}


def run(corpus: Path, tok: Path, out: Path, workers: int, langs: list[str], piece_chars: int | None) -> dict:
    code = ("import sys; from mmbert.data.prepare import prepare_shards; "
            f"prepare_shards({str(corpus)!r}, {str(tok)!r}, {str(out)!r}, languages={langs!r}, "
            f"workers={workers}, progress=False" + (f", piece_chars={piece_chars}" if piece_chars else "") + ")")
    return run_code(code)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=300, help="size of the large language's text")
    ap.add_argument("--doc-mb", type=int, default=50, help="size of the single-line document")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-whole", action="store_true", help="skip the uncut huge-document run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from mmbert.inference import cpu_model
    from mmbert.tokenizer import train_tokenizer_from_texts

    rows, load0 = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        t0 = time.perf_counter()
        make_corpus(td / "corpus", args.mb, args.doc_mb)
        sample = [json.loads(ln)["text"] for ln in (td / "corpus" / "deu_Latn" / "part-0000.jsonl").open()][:200]
        train_tokenizer_from_texts(sample, 4096).save(td / "tok")
        print(f"corpus made in {time.perf_counter() - t0:.0f} s", flush=True)
        mb_small = args.mb
        base = run_code("import mmbert.data.prepare, mmbert.tokenizer, mmbert.corpus.byo, time; time.sleep(2)")
        rows.append(("baseline: python + the imports, no work", 1, base, float("nan")))
        for w in args.workers:
            r = run(td / "corpus", td / "tok", td / f"s{w}", w, ["deu_Latn"], None)
            rows.append((f"{mb_small} MB language, {len(list((td / 'corpus' / 'deu_Latn').iterdir()))} files",
                         w, r, mb_small / r["s"]))
            print(rows[-1], flush=True)
        r = run(td / "corpus", td / "tok", td / "big", 1, ["fra_Latn"], None)
        rows.append((f"one {args.doc_mb} MB single-line document, cut", 1, r, args.doc_mb / r["s"]))
        print(rows[-1], flush=True)
        if not args.skip_whole:
            r = run(td / "corpus", td / "tok", td / "whole", 1, ["fra_Latn"], 1 << 40)
            rows.append((f"one {args.doc_mb} MB single-line document, whole", 1, r, args.doc_mb / r["s"]))
            print(rows[-1], flush=True)
    lines = [f"# `mmbert data prepare` streaming ({cpu_model()}, {os.cpu_count()} cores)", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start "
             f"{load0:.1f}; synthetic text, 4k-vocab tokenizer; `benchmarks/prepare_stream.py`.", "",
             "| input | workers | wall (s) | MB text/s | peak RSS, largest process (MB) | peak RSS, all processes (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for what, w, r, tput in rows:
        lines.append(f"| {what} | {w} | {r['s']:.0f} | {tput:.1f} | {r['one_mb']:,.0f} | {r['sum_mb']:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
