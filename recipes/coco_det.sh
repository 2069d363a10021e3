#!/usr/bin/env bash
# Perception-R1 object detection: GRPO on COCO train2017 with Qwen2.5-VL-3B-Instruct.
#
#   bash recipes/coco_det.sh [hydra overrides...]                 # e.g. trainer.total_epochs=2
#   DATASET_ROOT=/data/coco bash recipes/coco_det.sh               # annotations/ + train2017/ + val2017/
#   CURRICULUM=1 bash recipes/coco_det.sh                          # easy-to-hard by object count
#   LORA_RANK=64 bash recipes/coco_det.sh                          # LoRA adapters on the language model
#
# The paper's settings, commented: recipes/config/coco_det.yaml (over base.yaml, over verl's
# ppo_trainer). Validation: VAL_LIMIT (500) val2017 images, greedy, every 50 steps.
# Environment variables and plain Hydra overrides: docs/recipe_config.md.
set -euo pipefail
TASK=coco_det
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# On CPU: prepare $DATA_DIR/coco_det/ (perception-r1-prep coco_det, from $DATASET_ROOT or the offline
# sample), compose recipes/config/coco_det.yaml with the environment's OVERRIDES and "$@", run verl's
# validate_config, score reference answers through the reward manager, print the launch command.
preflight "$@"
# On GPUs (LAUNCH=1: a CUDA GPU, DRY_RUN unset): verl's own trainer with this task's config.
[[ $LAUNCH == 1 ]] || exit 0
exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" "${OVERRIDES[@]}" "$@"
