"""The `mmbert` command line: subcommands map onto library calls and hold no logic of their own.

    mmbert --help
    mmbert <subcommand> --help

User mistakes (bad paths, invalid configs, corrupt files) end with one line `error: … ` and the fix;
`--debug` shows the full traceback. Each subcommand is registered by one `_add_<name>` function
below; the handler imports its library lazily so `mmbert --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

# Exceptions that mean "the user gave us something wrong" (shown as one line, no traceback).
# Library code raises these (or subclasses) with a message naming the problem and the fix.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                NotADirectoryError, PermissionError, KeyError)

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(fn: Callable[[argparse._SubParsersAction], None]):
    """Register an `_add_<name>(subparsers)` function that adds one subcommand."""
    _COMMANDS.append(fn)
    return fn


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
    }
    for n in names:
        flags, kw = spec[n]
        p.add_argument(*flags, **kw)


# ----------------------------------------------------------------------------- subcommands
# (each section: one _add_<name> registering parser + handler; keep handlers to library calls)


@command
def _add_export(sub):
    p = sub.add_parser("export", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="write a model as a Hugging Face directory (transformers/sentence-transformers load it)",
                       description="Load our checkpoint or a transformers ModernBERT directory (or hub id) and "
                                   "write config.json + model.safetensors (+ tokenizer files) that "
                                   "transformers.AutoModelForMaskedLM loads with identical outputs.")
    _common(p, "model", "out")
    p.add_argument("--head", default="mlm", choices=["mlm", "none", "sequence-classification",
                                                     "token-classification"], help="which model class to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights")

    def run(args):
        import torch

        import mmbert

        model = mmbert.from_pretrained(args.model, head=args.head, dtype=getattr(torch, args.dtype))
        model.save_pretrained(args.out)
        print(f"wrote {args.out} ({model.num_parameters() / 1e6:.1f}M parameters, {args.dtype})")

    p.set_defaults(func=run)


@command
def _add_merge(sub):
    p = sub.add_parser("merge", help="merge checkpoints: TIES, linear or exponential averaging",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(p, "out")
    p.add_argument("--method", choices=("ties", "linear", "ema"), default="linear",
                   help="ties: task vectors relative to --base; linear: weighted mean; "
                        "ema: weights alpha^k from the newest model")
    p.add_argument("--models", nargs="+", required=True,
                   help="model directories to merge (for ema: oldest first, newest last)")
    p.add_argument("--base", default=None, help="ties only: the checkpoint the models branched from")
    p.add_argument("--density", type=float, default=1.0,
                   help="ties: fraction of each task vector kept (by magnitude), in (0, 1]")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per model (default: equal)")
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
    p.add_argument("--rule", choices=("magnitude", "strided"), default="magnitude",
                   help="how shrinking axes pick the units they keep")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")

    def run(args):
        from mmbert.init_from import init_from

        out = init_from(args.model, args.out, preset=args.preset, rule=args.rule,
                        overwrite=args.overwrite)
        print(f"initialised a {args.preset}-shaped model from {args.model} into {out}")

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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="mmBERT: train, merge, evaluate and run ModernBERT-architecture multilingual encoders.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
