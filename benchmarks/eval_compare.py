"""Side-by-side markdown table of `mmbert eval` results (results.json) for several models, e.g. a
trained model against its random-init floor:

    python benchmarks/eval_compare.py trained=out/eval7/trained-full random=out/eval-bench/full-random-init ...

Each NAME=DIR reads DIR/results.json; several DIRs may be given for one name (NAME=DIR1,DIR2), for a
suite that was split over processes with --tasks. Scores are ×100, mean ± std over fine-tuning seeds;
the seconds columns are each run's own wall and CPU seconds per task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(dirs: str) -> dict:
    tasks: dict = {}
    meta: dict = {"seconds": 0.0, "cpu_seconds": 0.0}
    for d in dirs.split(","):
        r = json.loads((Path(d) / "results.json").read_text())
        for k in ("seeds", "torch_threads", "started"):
            meta.setdefault(k, r.get(k))
        new = {k: v for k, v in r["tasks"].items() if "skipped" not in v}
        tasks.update(new)
        for k in ("seconds", "cpu_seconds"):  # a split suite: the parts' task seconds add up
            meta[k] += r.get(k) or sum(v.get(k, 0.0) for v in new.values())
    return {"tasks": tasks, **meta}


def cell(t: dict | None) -> str:
    if not t:
        return "–"
    a = t["average"]
    if t.get("metric", "").startswith("masked") or "loss" in a:
        return f"{100 * a['mean']:.1f} (loss {a['loss']:.2f})"
    std = a.get("std", 0.0) or 0.0
    return f"{100 * a['mean']:.1f} ± {100 * std:.1f}" if len(a.get("values", [])) > 1 else f"{100 * a['mean']:.1f}"


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__)
        return 2
    runs = {a.split("=", 1)[0]: load(a.split("=", 1)[1]) for a in argv}
    names = list(runs)
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r["tasks"]))
    print("| task | metric | " + " | ".join(f"{n} ×100" for n in names) + " | languages | "
          + " | ".join(f"{n} wall s / CPU s" for n in names) + " |")
    print("|---|---|" + "---:|" * len(names) + "---:|" + "---:|" * len(names))
    for t in tasks:
        first = next(r["tasks"][t] for r in runs.values() if t in r["tasks"])
        langs = len(first.get("languages", {})) or "–"
        secs = [f"{r['tasks'][t]['seconds']:.0f} / {r['tasks'][t]['cpu_seconds']:.0f}" if t in r["tasks"] else "–"
                for r in runs.values()]
        print(f"| {t} | {first.get('metric', '')} | " + " | ".join(cell(r["tasks"].get(t)) for r in runs.values())
              + f" | {langs} | " + " | ".join(secs) + " |")
    for n, r in runs.items():
        print(f"\n{n}: seeds {r['seeds']}, torch threads {r.get('torch_threads')}, total {r['seconds']:.0f} s wall, "
              f"{r['cpu_seconds']:.0f} s CPU, started {r['started']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
