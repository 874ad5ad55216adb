#!/usr/bin/env bash
# The one-call GPU check, from the repository root:   OUT=<results dir> bash benchmarks/gpu_check.sh
# ≤ 9 min on one H100/H200 (stage budgets below add up to ~8 min plus start-up). Writes to $OUT:
#   env.txt       machine, driver, torch/CUDA versions
#   pytest.txt    `pytest -m gpu` (the project's CUDA tests)
#   check.json    benchmarks/gpu_check.py's staged results (its docstring: stages and pass criteria)
#   gpu_train.json benchmarks/gpu_train.py: the real loop on mmbert-base (eager + compiled) and
#                 inference vs transformers
#   summary.md    the tables printed last — commit it as benchmarks/results/gpu_check_<gpu>_<yyyymm>.md
# If torch-optimi is not installed on the GPU machine, put its wheel in .whl/ (installed --no-deps).
set -u
PY=${PYTHON:-python3}   # the interpreter with torch (e.g. PYTHON=.venv/bin/python)
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE:=$(mktemp -d)}" .whl/*.whl || exit 3
fi
export PYTHONPATH=${SITE:-}:$PWD/src:$PWD/tests/train:$PWD/tests/model PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$OUT/env.txt"
echo "== 1/3 pytest -m gpu"
timeout ${T_PYTEST:-100} "$PY" -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/pytest.txt"
echo "== 2/3 staged checks (benchmarks/gpu_check.py)"
timeout ${T_CHECK:-320} "$PY" benchmarks/gpu_check.py --out "$OUT/check.json" --budget ${CHECK_BUDGET:-300} ${CHECK_STAGES:+--stages $CHECK_STAGES} 2>&1 \
  | grep -v "^[VIW][0-9]\{4\} \|^\[rank0\]:[VIW][0-9]\{4\} " | tail -40 | tee "$OUT/check.txt"
echo "== 3/3 the real loop (eager + compile) and inference vs transformers, mmbert-base"
timeout ${T_TRAIN:-100} "$PY" benchmarks/gpu_train.py --presets mmbert-base --steps 10 --batch-rows 64 \
  --micro-batch-tokens 32768 --compile --infer-batch-tokens 65536 --json "$OUT/gpu_train.json" 2>&1 | tail -14 | tee "$OUT/train.txt"
{ echo "# GPU check $(date -u +%Y-%m-%d)"; echo; echo '```'; cat "$OUT/env.txt"; echo '```'; echo
  echo "## pytest -m gpu"; echo; echo '```'; tail -15 "$OUT/pytest.txt"; echo '```'; echo
  echo "## staged checks"; echo; sed -n '/^| stage/,$p' "$OUT/check.txt"; echo
  echo "## training loop and inference (mmbert-base)"; echo; grep '^|' "$OUT/train.txt"; } > "$OUT/summary.md"
echo "total ${SECONDS}s; results in $OUT"
