#!/usr/bin/env bash
# Perception-R1 page OCR: GRPO on PageOCR with Qwen2-VL-2B-Instruct.
#
#   bash recipes/page_ocr.sh [hydra overrides...]
#   DATASET_ROOT=/data/page_ocr bash recipes/page_ocr.sh          # {train,val}.jsonl beside the images
#
# The paper's settings, commented: recipes/config/page_ocr.yaml (over base.yaml, over verl's
# ppo_trainer). 1 epoch on a 5k-row subset (TRAIN_LIMIT).
# Environment variables and plain Hydra overrides: docs/recipe_config.md.
set -euo pipefail
TASK=page_ocr
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# On CPU: prepare $DATA_DIR/page_ocr/ (perception-r1-prep page_ocr, from $DATASET_ROOT or the offline
# sample), compose recipes/config/page_ocr.yaml with the environment's OVERRIDES and "$@", run verl's
# validate_config, score reference answers through the reward manager, print the launch command.
preflight "$@"
# On GPUs (LAUNCH=1: a CUDA GPU, DRY_RUN unset): verl's own trainer with this task's config.
[[ $LAUNCH == 1 ]] || exit 0
exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" "${OVERRIDES[@]}" "$@"
