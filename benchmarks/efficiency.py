"""ModernBERT-style efficiency benchmark: ours vs transformers ModernBertModel vs a 12-layer
XLM-R-style model, same batches, tokens/s and MFU. Same as `mmbert bench`; the logic lives in
src/mmbert/apps/bench.py (method and FLOP counting in its docstring).

    python benchmarks/efficiency.py --quick                       # ≤ 3 min
    python benchmarks/efficiency.py --json benchmarks/results/efficiency.json
    python benchmarks/efficiency.py --peer-dtypes fp32 bf16       # peers in both dtypes
    python benchmarks/efficiency.py --help

Prints markdown tables; copy them into benchmarks/results/efficiency_<machine>_<yyyymm>.md.
"""

import sys

from mmbert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
