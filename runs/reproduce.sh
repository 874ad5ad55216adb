#!/usr/bin/env bash
# Reproduce mmBERT's findings at tiny scale (issues 10, 19); results page: docs/reproduction.md.
#
#   runs/reproduce.sh                      # from a clean clone: set-up → corpus → tokenizer → shards →
#                                          # 8 arms × 3 seeds of training → TIES → scores → page
#   SEEDS="0 1" JOBS=1 runs/reproduce.sh   # fewer seeds / one training at a time
#   ARMS="time-shuffled rep-progressive rep-fixed-tau" runs/reproduce.sh   # some arms only
#
# Every stage is reused when its output exists (rerun after an interruption: finished trainings,
# merges and scores are kept, an unfinished training resumes from its last checkpoint).
# Cost (the page's compute table, from the committed logs): 24 trainings (8 arms × 3 seeds), 75.6M tokens,
# 293 CPU-minutes at one thread per run — the nine base-arm runs (three tracks each) ≈ 12 CPU-minutes
# apiece on a Xeon with AMX (2026-11-22), the fifteen derived-arm runs (decay-all track only, 3.09M
# tokens) 11–14 CPU-minutes apiece on an AMD EPYC Zen 4 (2026-11-30). Two at a time on 2 idle cores that
# is ≈ 2½ h of training, plus scoring (≈ 1 min per model) and corpus + tokenizer + shards (3 min on the
# Xeon, ≈ 15 min on a loaded EPYC): ≈ 3 h from scratch — over the 2 h that issue 19 asked for; nothing
# short of fewer runs or tokens (which would change the committed numbers) brings it under. Measured on
# 2026-11-30 with other work on the machine: the last 12 derived runs took 116 min wall, scoring
# included. With the base and time-shuffled arms' runs present, the rest is ≈ 1½ h.
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
              --threads 1 --data-dir "$DATA_DIR" ${ARMS:+--arms $ARMS}
$MM study report --logs runs/study --out docs/reproduction.md
