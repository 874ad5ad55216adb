#!/usr/bin/env bash
# Reproduce mmBERT's findings at tiny scale (issue 10); results page: docs/reproduction.md.
#
#   runs/reproduce.sh                      # from a clean clone: set-up → corpus → tokenizer → shards →
#                                          # 3 arms × 3 seeds of training → TIES → scores → page
#   SEEDS="0 1" JOBS=1 runs/reproduce.sh   # fewer seeds / one training at a time
#
# Every stage is reused when its output exists (rerun after an interruption: finished trainings,
# merges and scores are kept, an unfinished training resumes from its last checkpoint).
# Cost on the 2-core development machine (Xeon with AMX, torch 2.13 CPU), measured on 2026-11-22:
# the nine trainings are 29.2M tokens and 111 CPU-minutes at one thread per run, so ≈ 56 min two at
# a time on an idle machine (they took 91 min there while sharing the cores with other work);
# scoring is ≈ 70 s per mbert-baseline/constant-mask run and ≈ 3 min per recipe run (5 models +
# SIB-200), ≈ 15 min; corpus + tokenizer + shards ≈ 3 min, set-up ≈ 2 min — about 1¼ h in all.
# Outputs: out/ (ignored: corpus, shards, runs, checkpoints), runs/study/*.json (the run logs the
# page is built from; commit them), docs/reproduction.md and docs/reproduction_files/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
MM=.venv/bin/mmbert
OUT=${OUT:-out}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
DATA_DIR=${MMBERT_EVAL_DATA:-../shared/data/eval}   # SIB-200 for the zero-shot score (skipped if absent)

# corpus → tokenizer → shards: the same folders and settings as `make demo`, so either reuses the other's
[ -f "$OUT/corpus/stats.json" ] || $MM corpus build --out "$OUT/corpus"
[ -f "$OUT/demo/tokenizer/tokenizer.json" ] || $MM tokenizer train --corpus "$OUT/corpus" --out "$OUT/demo/tokenizer"
[ -f "$OUT/demo/shards/index.json" ] || $MM data prepare --corpus "$OUT/corpus" --tokenizer "$OUT/demo/tokenizer" \
                                                         --out "$OUT/demo/shards"

# shellcheck disable=SC2086  # SEEDS is a list
$MM study run --shards "$OUT/demo/shards" --out "$OUT/study" --logs runs/study --seeds $SEEDS --jobs "$JOBS" \
              --threads 1 --data-dir "$DATA_DIR"
$MM study report --logs runs/study --out docs/reproduction.md
