#!/usr/bin/env bash
# Perception-R1's four tasks in one run: one policy (Qwen2.5-VL-3B-Instruct by default)
# trained with GRPO on RefCOCO, PixMo-Count, page OCR and COCO together.
#
#   bash recipes/perception_mix.sh [hydra overrides...]
#   DATASET_ROOT=/data bash recipes/perception_mix.sh      # /data/{refcoco,pixmo_count,page_ocr,coco_det}/
#   MIX=refcoco:5000,pixmo_count:10000,page_ocr:5000,coco_det:10000 bash recipes/perception_mix.sh
#
# Each task keeps its prompt, answer frame and reward; every task's data is prepared for
# the one MODEL_PATH / MODEL_FAMILY. MIX gives each task's training rows (default above:
# the paper's subsets, COCO 10k); verl concatenates the four train files and shuffles them.
# Validation: VAL_LIMIT (500) rows of each task's val split, greedy, every 50 steps,
# logged per data source (val-aux/<data_source>/...). Max response 2048 (the longest task's).
set -euo pipefail
TASK=perception_mix
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
