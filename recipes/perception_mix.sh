#!/usr/bin/env bash
# Perception-R1's four tasks in one run: one policy (Qwen2.5-VL-3B-Instruct) on RefCOCO,
# PixMo-Count, page OCR and COCO together.
#
#   bash recipes/perception_mix.sh [hydra overrides...]
#   DATASET_ROOT=/data bash recipes/perception_mix.sh      # /data/{refcoco,pixmo_count,page_ocr,coco_det}/
#   MIX=refcoco:5000,pixmo_count:10000,page_ocr:5000,coco_det:10000 bash recipes/perception_mix.sh
#
# The paper's settings, commented: recipes/config/perception_mix.yaml (over base.yaml, over verl's
# ppo_trainer). Each task keeps its prompt, answer frame and reward; validation per data source.
# Environment variables and plain Hydra overrides: docs/recipe_config.md.
set -euo pipefail
TASK=perception_mix
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# On CPU: prepare $DATA_DIR/perception_mix/<task>/ for each task of MIX (perception-r1-prep <task>,
# from $DATASET_ROOT/<task> or the offline sample), compose recipes/config/perception_mix.yaml with
# the environment's OVERRIDES and "$@", run verl's validate_config, score reference answers of
# every task through the reward manager, print the launch command.
preflight "$@"
# On GPUs (LAUNCH=1: a CUDA GPU, DRY_RUN unset): verl's own trainer with this task's config.
[[ $LAUNCH == 1 ]] || exit 0
exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" "${OVERRIDES[@]}" "$@"
