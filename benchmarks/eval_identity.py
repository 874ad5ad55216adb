"""Do two source trees give the same eval numbers? Runs the same tasks through each tree's harness on the
same tiny model, fixture data and shards, then compares every number exactly (a markdown table).

    git worktree add /tmp/before <old commit>          # or: git archive <commit> src tests | tar -x -C /tmp/before
    python benchmarks/eval_identity.py --before /tmp/before --after . --out /tmp/identity [--data-dir DIR]

Runs, per tree (each in a subprocess with PYTHONPATH=<tree>/src, one thread): every task on the fixture
data of tests/eval (2 seeds, shards for MLM); the `quick` suite on the real eval data (seed 0); every task
of `full` on the real data with a few languages and small caps (seed 0); the whole `full` and `quick`
suites on the fixture data. The model, data and shards are built once, by the `before` tree's test helpers.
Issue 21 (task files): 1,004 numbers, all identical (benchmarks/results/eval_identity_epyc-zen4-2c_202611.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

RUN = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    tree, out, inp, real = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    sys.path.insert(0, str(tree / "tests" / "eval"))
    import torch
    torch.set_num_threads(1)
    from mmbert.eval.runner import TaskSpec, run_suite
    if not (inp / "model").is_dir():
        from conftest import make_ours, write_fixture_data
        from test_harness import _shards
        from mmbert.eval.backbone import load_mlm_model
        make_ours(inp / "model"); write_fixture_data(inp / "fixture")
        _shards(inp / "shards", load_mlm_model(inp / "model").config.vocab_size)
    model, fx, shards = inp / "model", inp / "fixture", inp / "shards"
    T = TaskSpec
    tiny = [T("mlm", max_eval=100), T("sib200", epochs=1), T("sib200-retrieval"), T("tatoeba", max_eval=10),
            T("xnli", epochs=1, train_rows=20), T("pawsx", epochs=1, train_rows=20), T("wikiann", epochs=1, max_eval=8),
            T("udpos", epochs=1), T("sst2", epochs=1, max_train=16), T("nusax", epochs=1, max_train=8),
            T("xquad-retrieval")]
    small = [T("sib200", epochs=1, max_train=128, max_eval=40, languages=("eng_Latn", "zho_Hans", "yor_Latn")),
             T("sib200-retrieval", languages=("deu_Latn", "zho_Hans", "yor_Latn")),
             T("tatoeba", max_eval=100, languages=("deu", "cmn", "swh")),
             T("xnli", epochs=1, train_rows=2000, max_train=128, max_eval=40, languages=("en", "sw", "zh")),
             T("pawsx", epochs=1, train_rows=1500, max_train=128, max_eval=40, languages=("en", "ja")),
             T("wikiann", epochs=1, max_train=128, max_eval=40, languages=("en", "de", "yo")),
             T("udpos", epochs=1, max_train=128, max_eval=40,
               languages=("UD_English-EWT", "UD_Japanese-GSD", "UD_Yoruba-YTB")),
             T("sst2", epochs=1, max_train=256, max_eval=100), T("nusax", epochs=1, max_train=16, max_eval=40),
             T("xquad-retrieval", max_len=128, languages=("en", "de", "zh")),
             T("xquad", epochs=1, max_len=128, max_train=64, max_eval=20, languages=("en", "de", "th"))]
    kw = dict(progress=False, plots=False)
    runs = {"fixture": run_suite(model, "full", data_dir=fx, out_dir=out / "fixture", seeds=(0, 1), shards=shards,
                                 task_specs=tiny, **kw),
            "quick": run_suite(model, "quick", data_dir=real, out_dir=out / "quick", shards=shards, **kw),
            "real-small": run_suite(model, "full", data_dir=real, out_dir=out / "real-small", seeds=(0,),
                                    task_specs=small, **kw),
            "full-fixture": run_suite(model, "full", data_dir=fx, out_dir=out / "full-fixture", shards=shards, **kw),
            "quick-fixture": run_suite(model, "quick", data_dir=fx, out_dir=out / "quick-fixture", shards=shards,
                                       **kw)}
    (out / "all.json").write_text(json.dumps(runs, default=str))
''')
SKIP = {"seconds", "cpu_seconds", "started", "torch_threads"}
TEXT = {"protocol", "metric", "model", "suite", "backbone", "data_dir", "device", "error", "labels"}


def compare(a, b, path: str, out: dict) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k in SKIP or k in TEXT:
                continue
            if k not in b:
                out["missing"].append(f"{path}.{k}")
            else:
                compare(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]", out)
    else:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            out["numbers"] += 1
        if a != b:
            out["differ"].append(f"{path}: {a!r} vs {b!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="source tree (with src/ and tests/eval/)")
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared/data/eval")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    inp = args.out / "inputs"
    res = {}
    for name, tree in (("before", args.before), ("after", args.after)):
        env = {**os.environ, "PYTHONPATH": str(tree.resolve() / "src")}
        subprocess.run([sys.executable, "-c", RUN, str(args.before.resolve()) if name == "before" else str(tree.resolve()),
                        str(args.out / name), str(inp), str(args.data_dir.resolve())], env=env, check=True)
        res[name] = json.loads((args.out / name / "all.json").read_text())
    print("| run | numbers compared | identical | differing | absent after |\n|---|---:|---:|---:|---:|")
    total = 0
    for run in res["before"]:
        o = {"numbers": 0, "differ": [], "missing": []}
        compare(res["before"][run], res["after"][run], run, o)
        total += o["numbers"]
        print(f"| {run} | {o['numbers']} | {o['numbers'] - len(o['differ'])} | {len(o['differ'])} | {len(o['missing'])} |")
        for line in o["differ"][:10] + o["missing"][:10]:
            print(f"|  {line} | | | | |")
    print(f"\n{total} numbers compared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
