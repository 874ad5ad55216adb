"""The one-command end-to-end run: corpus → tokenizer → shards → 3-phase pretraining with annealed
language sampling → three decay variants → TIES merge → evaluation (with a random-init floor) →
report.md / report.html.

    make demo                       # = mmbert demo --out out/demo (sets up .venv first)
    mmbert demo --out out/demo --data-dir ../shared/data/eval
    python -c "from mmbert.apps.demo import write_report; write_report('out/demo')"   # re-render the report

Each stage writes a `.done.json` marker into its folder when it finishes; re-running reuses finished
stages (and the pretraining run resumes exactly where it stopped). The embedded corpus is built
once into `--corpus` (default out/corpus) and shared by later runs. What the report needs is kept
in `<out>/demo.json` and the stages' own files, so the report can be rendered again from them.

Console: one overall line `demo [k/n] stage · elapsed · ETA` at every stage start and end and every
`heartbeat` seconds in between; the ETA adds up estimates from rates measured in this run (training
tokens/s, a stage measured before) and names the stages it cannot estimate yet. Nested progress bars
only on a terminal; redirected to a file, the log is plain lines.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from markdown_it import MarkdownIt
from tqdm import tqdm

from mmbert.apps.demo_report import MLM_TOKENS, RANDOM, STAGES, render
from mmbert.corpus.build import build_corpus, summary
from mmbert.data.prepare import prepare_shards
from mmbert.data.shards import ShardIndex
from mmbert.eval import data as eval_data
from mmbert.eval.mlm import evaluate_mlm
from mmbert.eval.runner import format_markdown, run_suite
from mmbert.export.hf import from_pretrained, save_pretrained
from mmbert.inference import cpu_model, fill_mask
from mmbert.merge import DECAY_TIES_DENSITY, merge
from mmbert.model import EncoderConfig, build_model
from mmbert.tokenizer import VOCAB_SIZE, load_tokenizer, train_tokenizer
from mmbert.train.loop import train
from mmbert.train.recipe import get_recipe
from mmbert.utils import atomic_write, publish_dir


def _done(folder: Path) -> dict | None:
    marker = folder / ".done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _mark(folder: Path, info: dict) -> None:
    atomic_write(folder / ".done.json", json.dumps(info, indent=2, sort_keys=True))


def _hms(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the corpus/shard worker pools)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


# ----------------------------------------------------------------------------- console
class Console:
    """The overall progress line and per-stage bookkeeping (wall and CPU seconds, reused/skipped).

    `estimate[stage]` holds the seconds a stage not yet started is expected to take (set from rates
    measured in this run); `current` (set while a stage runs) returns (seconds left or None, detail).
    """

    def __init__(self, log: Callable[[str], None], heartbeat: float = 60.0):
        self.log, self.heartbeat = log, heartbeat
        self.t0 = time.perf_counter()
        self.k, self.name = 0, ""
        self.timings: dict[str, dict] = {}
        self.estimate: dict[str, float] = {}
        self.current: Callable[[], tuple[float | None, str]] | None = None

    def line(self, what: str) -> str:
        left, unknown = 0.0, []
        for s in STAGES[max(0, self.k - 1):]:
            if s in self.timings:
                continue
            e = self.current()[0] if (s == self.name and self.current) else self.estimate.get(s)
            if e is None:
                unknown.append(s)
            else:
                left += e
        if not unknown:
            eta = f"ETA {_hms(left)}"
        elif left:
            eta = f"ETA {_hms(left)} + {', '.join(unknown)} (not measurable yet)"
        else:
            eta = f"ETA: not measurable yet ({', '.join(unknown)})"
        return (f"demo [{self.k}/{len(STAGES)}] {self.name}{' ' + what if what else ''} · "
                f"elapsed {_hms(time.perf_counter() - self.t0)} · {eta}")

    def stage(self, name: str, folder: Path, fn: Callable[[], dict] | None, *, skip: str | None = None,
              progress: Callable[[], tuple[float | None, str]] | None = None) -> dict:
        """Run `fn` unless `folder` already holds a finished result (reused) or `skip` says why not."""
        self.k, self.name = STAGES.index(name) + 1, name
        prev = _done(folder) if folder is not None else None
        if skip is not None or prev is not None:
            status = "skipped" if skip is not None else "reused"
            prev = prev or {}
            self.timings[name] = {"seconds": prev.get("seconds", 0.0), "cpu_seconds": prev.get("cpu_seconds"),
                                  "status": status, "note": skip or "finished in an earlier run"}
            self.log(self.line(f"{status}: {skip}" if skip else "reused (finished earlier in "
                               f"{_hms(prev.get('seconds', 0))})"))
            return prev
        self.current = progress
        self.log(self.line("started"))
        stop = threading.Event()

        def beat():
            while not stop.wait(self.heartbeat):
                detail = self.current()[1] if self.current else ""
                self.log(self.line(f"running{' (' + detail + ')' if detail else ''}"))

        t0, c0 = time.perf_counter(), _cpu()
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            info = fn() or {}
        finally:
            stop.set()
            thread.join()
            self.current = None
        info["seconds"], info["cpu_seconds"] = time.perf_counter() - t0, _cpu() - c0
        _mark(folder, info)
        self.timings[name] = {"seconds": info["seconds"], "cpu_seconds": info["cpu_seconds"], "status": "ran",
                              "note": ""}
        self.log(self.line(f"done in {_hms(info['seconds'])}"))
        return info


def _training_progress(run: Path, rec, t_start: float) -> Callable[[], tuple[float | None, str]]:
    """(seconds left, "tokens done/total at rate") for the pretraining stage, from run/metrics.jsonl."""
    main_total = sum(p.tokens for p in rec.phases)
    total = main_total + sum(p.tokens for v in rec.variants.values() for p in v)
    state = {"start": None}

    def done_tokens() -> int:
        last: dict[str, int] = {}
        path = run / "metrics.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                if r.get("type") == "train":
                    last[r["track"]] = r["tokens"]
        return last.get("main", 0) + sum(max(0, t - main_total) for k, t in last.items() if k != "main")

    state["start"] = done_tokens()

    def progress() -> tuple[float | None, str]:
        done, dt = done_tokens(), time.perf_counter() - t_start
        rate = (done - state["start"]) / dt if dt > 0 else 0.0
        if rate <= 0:
            return None, f"{done:,}/{total:,} tokens"
        return (total - done) / rate, f"{done:,}/{total:,} tokens at {rate:,.0f} tok/s"

    return progress


# ----------------------------------------------------------------------------- the run
def run_demo(out: str | os.PathLike = "out/demo", *, corpus: str | os.PathLike = "out/corpus",
             data_dir: str | os.PathLike | None = None, seed: int = 0, vocab_size: int = VOCAB_SIZE,
             recipe: str = "cpu-demo", preset: str | None = None, density: float = DECAY_TIES_DENSITY,
             eval_suite: str = "quick",
             sources: list[str] | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
             heartbeat: float = 60.0) -> Path:
    """Run every stage into `out`; returns the path of report.md.

    preset: the model preset (None: the recipe's). density: TIES density for merging the decay variants.

    progress: show the overall line; nested bars only when stderr is a terminal.
    log: where lines go (default: tqdm.write, which keeps bars intact).
    """
    if log is None:
        log = tqdm.write if progress else (lambda msg: None)
    bars = progress and sys.stderr.isatty()
    out, corpus = Path(out), Path(corpus)
    out.mkdir(parents=True, exist_ok=True)
    con = Console(log, heartbeat)
    root, where = _data_dir(data_dir)
    skip = None if root.is_dir() else (f"no evaluation data at {os.path.relpath(root, out)} ({where}); pass "
                                       f"--data-dir or set ${eval_data.ENV_VAR}")
    if skip:
        con.estimate.update({"eval-suite": 0.0, "eval-suite-random-init": 0.0})

    # 1. corpus (shared between demo runs), 2. tokenizer, 3. shards
    corpus_info = _corpus_stage(con, corpus, sources, bars, log)
    tok_dir, shards = out / "tokenizer", out / "shards"
    _tokenizer_and_shards_stages(con, corpus, tok_dir, shards, vocab_size, seed, bars, log)
    index = ShardIndex.load(shards)

    # 4. pretraining: main track (pretrain → mid) and the three decay variants
    rec = get_recipe(recipe)
    config = EncoderConfig.from_preset(preset or rec.preset, vocab_size=_round_vocab(index.vocab_size))
    run = out / "run"
    t_train = time.perf_counter()
    con.stage("pretrain", run / "done",
              lambda: {"tracks": train(rec, config, shards, run, seed=seed, resume=(run / "run.json").is_file(),
                                       progress=bars)["tracks"]},
              progress=_training_progress(run, rec, t_train))
    train_rate = _measured_train_rate(run)
    exports = run / "export"
    main_last = rec.phases[-1].name
    variants = list(rec.variants)  # the loop's exports carry the shards' tokenizer (index.json names it)
    langs = [lang for lang in index.languages if index.has(lang, "heldout")]
    if train_rate:  # a forward pass costs about a third of a training step (forward + backward)
        con.estimate["eval-mlm"] = (len(variants) + 3) * len(langs) * MLM_TOKENS / (3 * train_rate)

    # 5. TIES merge of the decay variants, relative to the checkpoint they branched from
    merged = out / "merged"
    con.stage("merge", merged / "done", lambda: {"path": os.path.relpath(merge(
        [exports / v for v in variants], merged / "model", method="ties", base=exports / main_last,
        density=density, overwrite=True, progress=bars), out)})

    # 6. evaluation: per-language held-out MLM for the branch point, each variant, the merge and an
    #    untrained model of the same shape (the floor)
    random_dir = out / RANDOM / "model"
    _save_random_init(config, tok_dir, random_dir, seed)
    models = {main_last: exports / main_last, **{v: exports / v for v in variants}, "ties-merge": merged / "model",
              RANDOM: random_dir}
    con.stage("eval-mlm", out / "eval" / "mlm",
              lambda: _eval_mlm(out, models, shards, langs, rec.language_tiers(), bars))

    # 7. the task suite on the merge, then on the random-init model (same tasks, same seed)
    _suite_stages(con, out, merged / "model", random_dir, eval_suite, root, shards, seed, bars, skip)

    atomic_write(out / "demo.json", json.dumps({
        "recipe": rec.to_dict(), "preset": preset or rec.preset, "model": config.to_dict(), "seed": seed,
        "density": density, "suite": eval_suite, "corpus": {**corpus_info, "path": os.path.relpath(corpus, out)},
        "eval_data": {"found": root.is_dir(), "where": where,
                      "path": os.path.relpath(root, out)}, "stages": con.timings,
        "total_seconds": time.perf_counter() - con.t0, "machine": _machine()}, indent=2, sort_keys=True))
    report = write_report(out)
    log(f"demo: finished in {_hms(time.perf_counter() - con.t0)}; report in {report} and "
        f"{report.with_suffix('.html')}")
    return report


def _corpus_stage(con: Console, corpus: Path, sources: list[str] | None, bars: bool,
                  log: Callable[[str], None]) -> dict:
    """Build the corpus (or reuse one built here or by `mmbert corpus build`); its languages and size."""
    def build():
        stats = build_corpus(corpus, cache_dir=corpus.parent / "cache", sources=sources, progress=bars)
        if not bars:  # with bars, build_corpus printed the same summary itself
            log(summary(stats))
        return {"languages": stats["num_languages"], "bytes": stats["total_bytes"]}

    if (corpus / "stats.json").is_file() and _done(corpus) is None:  # built by `mmbert corpus build`
        st = json.loads((corpus / "stats.json").read_text())
        _mark(corpus, {"languages": st.get("num_languages"), "bytes": st.get("total_bytes"),
                       "seconds": st.get("build_seconds", 0.0)})
    return con.stage("corpus", corpus, build)


def _tokenizer_and_shards_stages(con: Console, corpus: Path, tok_dir: Path, shards: Path, vocab_size: int,
                                 seed: int, bars: bool, log: Callable[[str], None]) -> None:
    """The tokenizer (its per-language fertility table goes to a file, not the console), then the shards."""
    def tokenizer():
        tok = train_tokenizer(corpus, vocab_size, tok_dir, seed=seed, progress=False)
        log(f"tokenizer: {tok.vocab_size} tokens; tokens per word per language in {tok_dir / 'fertility.md'}")
        return {"vocab_size": tok.vocab_size}

    def shard():
        res = prepare_shards(corpus, tok_dir, shards, progress=bars)
        if not bars:  # with bars, prepare_shards printed this line itself
            train_tokens = sum(c["train"]["tokens"] for c in res["languages"].values())
            log(f"shards: {len(res['languages'])} languages, {train_tokens:,} training tokens")
        return {"languages": len(res["languages"])}

    con.stage("tokenizer", tok_dir, tokenizer)
    con.stage("shards", shards, shard)


def _eval_mlm(out: Path, models: dict[str, Path], shards: Path, langs: list[str], tiers, bars: bool) -> dict:
    """Held-out MLM of every model into eval/mlm.json, and the fill-mask answers of the merge and the
    untrained model (what a user sees first) into eval/fill_mask.json."""
    res = {}
    for name, path in models.items():
        model = from_pretrained(path)
        res[name] = evaluate_mlm(model, shards, langs, max_tokens_per_lang=MLM_TOKENS, seed=0, seq_len=256,
                                 tiers=tiers, progress=bars)
    mlm_json = out / "eval" / "mlm.json"
    mlm_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(mlm_json, json.dumps(res, indent=1))
    answers = {name: [[d["token"] for d in r[0]] for r in fill_mask(str(models[name]), FILL_MASK_PROMPTS)]
               for name in ("ties-merge", RANDOM)}
    atomic_write(out / "eval" / "fill_mask.json",
                 json.dumps({"prompts": FILL_MASK_PROMPTS, "top5": answers}, indent=1, ensure_ascii=False))
    return {"models": list(res)}


def _suite_stages(con: Console, out: Path, merged_model: Path, random_dir: Path, eval_suite: str, root: Path,
                  shards: Path, seed: int, bars: bool, skip: str | None) -> None:
    """The task suite on the merge, then on the random-init model (same tasks, same seed)."""
    for stage, model_dir, sub in (("eval-suite", merged_model, "suite"),
                                  ("eval-suite-random-init", random_dir, f"suite-{RANDOM}")):
        def suite(model_dir=model_dir, sub=sub):
            res = run_suite(model_dir, eval_suite, data_dir=root, out_dir=out / "eval" / sub, seeds=(seed,),
                            shards=shards, progress=bars)
            # paths relative to the output directory: the folder can be moved or shared
            res.update(model=os.path.relpath(model_dir, out), data_dir=os.path.relpath(root, out))
            atomic_write(out / "eval" / sub / "results.json", json.dumps(res, indent=2, ensure_ascii=False))
            atomic_write(out / "eval" / sub / "results.md", format_markdown(res))
            return {}

        con.stage(stage, out / "eval" / sub, suite, skip=skip)
        if stage == "eval-suite" and con.timings[stage]["status"] == "ran":
            con.estimate["eval-suite-random-init"] = con.timings[stage]["seconds"]  # same work, same machine


FILL_MASK_PROMPTS = ["The capital of France is <mask>.", "Die Hauptstadt von Deutschland ist <mask>."]


def _round_vocab(n: int) -> int:
    return n if n % 64 == 0 else n + 64 - n % 64


def _data_dir(data_dir) -> tuple[Path, str]:
    """(evaluation data directory, how it was found) — the same rule as `mmbert eval`."""
    root = eval_data.resolve_data_dir(data_dir)
    if data_dir:
        return root, "--data-dir"
    if os.environ.get(eval_data.ENV_VAR):
        return root, f"${eval_data.ENV_VAR}"
    return root, "the default, ../shared/data/eval beside the checkout"


def _measured_train_rate(run: Path) -> float | None:
    """Training tokens per second over the run's logged steps (median of the per-step rates)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = sorted(r["tokens_per_s"] for r in map(json.loads, path.read_text().splitlines())
                   if r.get("type") == "train" and r.get("tokens_per_s"))
    return rates[len(rates) // 2] if rates else None


def _save_random_init(config, tok_dir: Path, path: Path, seed: int) -> None:
    """The untrained model (same preset, vocabulary and tokenizer, initialised with `seed`)."""
    if (path / "config.json").is_file():
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, head="mlm")
    model.tokenizer = load_tokenizer(tok_dir)
    with publish_dir(path) as tmp:
        save_pretrained(model, tmp)


def _machine() -> dict:
    cpu = cpu_model()
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gib": mem,
            "gpu": gpu, "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__}


# ----------------------------------------------------------------------------- report
def write_report(out: str | os.PathLike) -> Path:
    """Render report.md and report.html from a demo run's files (demo.json, run/, eval/)."""
    out = Path(out)
    md = render(out)
    report = out / "report.md"
    atomic_write(report, md)
    atomic_write(out / "report.html", markdown_to_html(md))
    return report


def markdown_to_html(md: str) -> str:
    """CommonMark + tables (markdown-it-py): code spans, bold, lists, images and links render; table
    cells follow the column alignment (`---:` right, numbers; `---` left, text)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;vertical-align:top}td[style*=right]{font-variant-numeric:tabular-nums}"
             "img{max-width:100%}code{background:#f4f4f4;padding:0 3px}pre{background:#f4f4f4;padding:1em;"
             "overflow-x:auto}")
    return f"<!doctype html>\n<meta charset='utf-8'>\n<title>mmbert demo report</title>\n<style>{style}</style>\n{body}"
