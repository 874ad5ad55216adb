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
# Cost on the 2-core development machine (Xeon with AMX, torch 2.13 CPU), measured on 2026-11-22 for
# the three base arms: nine trainings, 29.2M tokens, 111 CPU-minutes at one thread per run (≈ 56 min
# two at a time on an idle machine); scoring ≈ 15 min; corpus + tokenizer + shards ≈ 3 min, set-up
# ≈ 2 min. The five derived arms (time-shuffled, tau-0.3, tau-1.0, rep-progressive, rep-fixed-tau)
# train the decay-all track only (3.09M tokens, ≈ 11 CPU-minutes a run): 15 more runs ≈ 165
# CPU-minutes, ≈ 85 min two at a time, plus ≈ 6 min of scoring. Measured on 2026-11-30 (AMD EPYC Zen 4,
# 2 cores, other work on the machine): the time-shuffled arm's three runs took 808–825 CPU-s each
# and 58 min wall two-then-one at a time, scoring included. The whole study is ≈ 2¾ h from
# scratch, ≈ 1 h when the base and time-shuffled arms' runs exist.
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
